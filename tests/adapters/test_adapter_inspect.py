"""`fairsteer adapter inspect`, run through the real command line entry point (cli.main.main)."""

import json

import pytest

import cli.main
from adapters import io
from adapters.inspect import summarize_sites
from adapters.sites import all_sites
from tests.tiny_models import save_tiny_model


@pytest.fixture(autouse=True)
def _only_adapter_commands(monkeypatch):
    # The command line imports every subcommand module; these tests exercise only ours, so they do not
    # depend on the server's and trainer's commands being importable.
    monkeypatch.setattr(cli.main, "COMMAND_MODULES", ("cli.adapter", "cli.model"))


def _inspect(capsys, *argv):
    code = cli.main.main(["adapter", "inspect", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_inspect_prints_metadata_sites_and_an_aligned_calibration_table(spec, tmp_path, capsys):
    path = io.save(spec, tmp_path / "a.safetensors")
    code, out, err = _inspect(capsys, str(path))
    assert code == 0, err
    assert "test-adapter" in out and "dso" in out and spec.version in out
    assert "5 sites: layers.0-1 input_norm+post_attention_norm, final_norm" in out
    assert "640 (a and b" in out  # 5 sites x 64 x 2
    assert spec.meta.identity.fingerprint in out and "LlamaForCausalLM" in out
    assert '{"set": "synthbias", "rows": 600}' in out, "nested training settings are shown as JSON"
    table = out[out.index("\ncalibration\n"):].strip().splitlines()[1:]
    assert table[0].split() == ["strength", "per_occupation_bias", "unambiguous_accuracy", "kl_to_base"]
    assert table[2].split() == ["1", "0.051", "0.5", "0.0123"]
    assert len({len(line) for line in table}) == 1, "the calibration table must be aligned"


def test_inspect_json_is_one_object_with_the_model_share(spec, tmp_path, capsys):
    path = io.save(spec, tmp_path / "a.safetensors")
    model_dir = save_tiny_model(tmp_path / "model", hidden=64, layers=2)
    code, out, err = _inspect(capsys, str(path), "--json", "--model", str(model_dir))
    assert code == 0, err
    info = json.loads(out)
    assert info["version"] == spec.version and info["format_version"] == 1
    assert info["sites"] == list(all_sites(2)) and info["num_parameters"] == 640
    assert info["calibration"] == [dict(row) for row in spec.meta.calibration]
    from tests.tiny_models import tiny_model
    expected = sum(p.numel() for p in tiny_model(hidden=64, layers=2).parameters())
    assert info["model"]["num_parameters"] == expected, "counted from the safetensors headers"
    assert info["model"]["share"] == pytest.approx(640 / expected)
    assert info["model"]["fits"] is True


def test_inspect_reports_a_model_the_adapter_does_not_fit(spec, tmp_path, capsys):
    path = io.save(spec, tmp_path / "a.safetensors")
    model_dir = save_tiny_model(tmp_path / "wide", hidden=96, layers=2)
    code, out, _ = _inspect(capsys, str(path), "--model", str(model_dir))
    assert code == 0
    assert "DOES NOT FIT: the adapter was trained for hidden_size 64; this model has 96" in out


def test_inspect_refuses_a_corrupt_file_with_exit_2_and_no_traceback(spec, tmp_path, capsys):
    path = io.save(spec, tmp_path / "a.safetensors")
    path.write_bytes(path.read_bytes()[:100])
    code, out, err = _inspect(capsys, str(path))
    assert code == 2 and out == ""
    assert "not a readable safetensors file" in err and str(path) in err
    assert "Traceback" not in err


def test_inspect_refuses_a_model_folder_without_config(spec, tmp_path, capsys):
    path = io.save(spec, tmp_path / "a.safetensors")
    code, _, err = _inspect(capsys, str(path), "--model", str(tmp_path))
    assert code == 2 and "no config.json" in err


def test_site_summary_groups_kinds_and_compresses_ranges():
    assert summarize_sites(all_sites(30)) == "61 sites: layers.0-29 input_norm+post_attention_norm, final_norm"
    partial = ["layers.0.input_norm", "layers.1.input_norm", "layers.5.input_norm", "layers.0.post_attention_norm"]
    assert summarize_sites(partial) == "4 sites: layers.0-1,5 input_norm, layers.0 post_attention_norm"
    assert summarize_sites(["final_norm"]) == "1 site: final_norm"
