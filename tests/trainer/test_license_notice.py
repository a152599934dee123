"""An adapter is a derivative of its base model: `fairsteer train` on a model folder carrying a NOTICE (as
`fairsteer model pull gemma-3-270m` writes one) records it in the adapter, and `fairsteer adapter inspect`
shows it. Adapter files written before the field existed still load, with no notice."""

import json
import shutil
from pathlib import Path

import pytest
from tiny_models import save_tiny_model

from adapters import io
from adapters.model_store import MODELS, NOTICE_FILE
from cli.main import main

SHIPPED = Path(__file__).parents[2] / "adapters" / "shipped" / "smollm2-135m-instruct-dso.safetensors"
GEMMA_NOTICE = MODELS["gemma-3-270m"].notice


@pytest.fixture(scope="module")
def plain_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


@pytest.fixture(scope="module")
def noticed_dir(plain_dir, tmp_path_factory) -> Path:
    folder = shutil.copytree(plain_dir, tmp_path_factory.mktemp("tiny-noticed") / "model")
    (folder / NOTICE_FILE).write_text(GEMMA_NOTICE)
    return folder


def _train(model_dir: Path, out: Path, capsys) -> str:
    assert main(["train", "--method", "caa", "--model", str(model_dir), "--out", str(out), "--n-train", "40"]) == 0
    return capsys.readouterr().err


def test_training_on_a_model_with_a_notice_records_it_and_inspect_shows_it(noticed_dir, tmp_path, capsys):
    adapter = tmp_path / "caa.safetensors"
    err = _train(noticed_dir, adapter, capsys)
    assert "recorded in the adapter" in err, "the trainer must say the notice travels with the adapter"
    assert io.load(adapter).meta.license_notice == GEMMA_NOTICE.strip()

    assert main(["adapter", "inspect", str(adapter)]) == 0
    out = capsys.readouterr().out
    section = out[out.index("license notice"):]
    assert "Gemma is provided under and subject to the Gemma Terms of Use found at ai.google.dev/gemma/terms" in section
    assert main(["adapter", "inspect", str(adapter), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["license_notice"] == GEMMA_NOTICE.strip()


def test_training_on_a_model_without_a_notice_records_none(plain_dir, tmp_path, capsys):
    adapter = tmp_path / "caa.safetensors"
    assert "recorded in the adapter" not in _train(plain_dir, adapter, capsys)
    assert io.load(adapter).meta.license_notice is None
    assert main(["adapter", "inspect", str(adapter)]) == 0
    assert "license notice" not in capsys.readouterr().out


def test_an_adapter_written_before_license_notices_still_loads_and_inspects(capsys):
    assert "license_notice" not in SHIPPED.read_bytes()[:20000].decode(errors="replace"), \
        "this test needs an adapter file from before the field"
    assert io.load(SHIPPED).meta.license_notice is None
    assert main(["adapter", "inspect", str(SHIPPED), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["license_notice"] is None
