"""The adapter file (adapters/io.py, adapters/spec.py): exact round trip, and a named refusal per defect."""

import dataclasses
import json
import pickle

import pytest
import torch
from safetensors.torch import save_file

from adapters import io
from adapters.sites import all_sites, module_path
from adapters.spec import FORMAT_VERSION, AdapterFormatError, ModelIdentity
from tests.adapters.adapter_helpers import ARCHS, HIDDEN, LAYERS, make_spec, small_model
from tests.tiny_models import tiny_config


def _tensors_and_header(spec):
    """What `io.save` writes, as editable Python values, to build defective files by hand."""
    tensors = {}
    for i, site in enumerate(spec.sites):
        tensors[f"{site}.a"], tensors[f"{site}.b"] = spec.a[i].clone(), spec.b[i].clone()
    meta = dataclasses.asdict(spec.meta)
    meta["sites"] = list(spec.sites)
    header = {"format": io.FORMAT_TAG, "format_version": str(FORMAT_VERSION)}
    return tensors, header, meta


def _write(path, tensors, header, meta):
    save_file(tensors, str(path), metadata={**header, "metadata": json.dumps(meta)})
    return path


def test_adapter_roundtrip_is_exact(spec, tmp_path):
    path = io.save(spec, tmp_path / "a.safetensors")
    back = io.load(path, model=spec.meta.identity)
    assert back.sites == spec.sites
    assert torch.equal(back.a, spec.a) and torch.equal(back.b, spec.b)
    assert back.meta == spec.meta, "metadata (training settings, calibration) must survive exactly"
    assert back.version == spec.version and len(spec.version) == 12
    assert io.load(io.save(back, tmp_path / "b.safetensors")).version == spec.version, "version must be stable"


def test_recalibrating_keeps_the_version_and_retraining_changes_it(spec, tmp_path):
    recalibrated = dataclasses.replace(spec, meta=dataclasses.replace(
        spec.meta, calibration=({"strength": 0.5, "per_occupation_bias": 0.1},)))
    back = io.load(io.save(recalibrated, tmp_path / "a.safetensors"))
    assert back.meta.calibration == ({"strength": 0.5, "per_occupation_bias": 0.1},)
    assert back.version == spec.version, "a new calibration table must not change the adapter's version"
    retrained = dataclasses.replace(spec, b=spec.b + 1e-3)
    assert retrained.version != spec.version, "changed tensors must change the version"


def _refused(path, match, model=None):
    with pytest.raises(AdapterFormatError, match=match) as info:
        io.load(path, model=model)
    assert str(path) in str(info.value), "the refusal must name the file"


def test_corrupt_bytes_are_refused(tmp_path):
    path = tmp_path / "noise.safetensors"
    path.write_bytes(bytes(range(256)) * 16)
    _refused(path, "not a readable safetensors file")


def test_truncated_file_is_refused(spec, tmp_path):
    path = io.save(spec, tmp_path / "a.safetensors")
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    _refused(path, "truncated")


class _Tripwire:
    """Unpickling this creates a file: proof that a loader ran pickle."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_and_torch_save_files_are_refused_without_unpickling(spec, tmp_path):
    marker = tmp_path / "unpickled"
    raw = tmp_path / "raw.pkl"
    raw.write_bytes(pickle.dumps({"a": _Tripwire(marker)}))
    _refused(raw, "not a readable safetensors file")
    saved = tmp_path / "torch.pt"
    torch.save({"a": spec.a, "trap": _Tripwire(marker)}, saved)
    _refused(saved, "not a readable safetensors file")
    assert not marker.exists(), "load() must never unpickle anything"


def test_safetensors_that_is_not_an_adapter_is_refused(tmp_path):
    path = tmp_path / "weights.safetensors"
    save_file({"model.norm.weight": torch.ones(64)}, str(path))
    _refused(path, "not a fairsteer adapter")


def test_other_format_version_is_refused(spec, tmp_path):
    tensors, header, meta = _tensors_and_header(spec)
    path = _write(tmp_path / "v2.safetensors", tensors, {**header, "format_version": "2"}, meta)
    _refused(path, "format version '2'")


@pytest.mark.parametrize("arch, changes, match", [
    ("Qwen2ForCausalLM", {}, "architecture 'LlamaForCausalLM'; this model has 'Qwen2ForCausalLM'"),
    ("LlamaForCausalLM", {"hidden_size": 32}, "hidden_size 64; this model has 32"),
    ("LlamaForCausalLM", {"num_hidden_layers": 3}, "num_layers 2; this model has 3"),
    ("LlamaForCausalLM", {"num_key_value_heads": 4}, "fingerprint"),  # same width and depth, another shape
])
def test_another_model_is_refused(spec, tmp_path, arch, changes, match):
    config = tiny_config(arch, hidden=HIDDEN, layers=LAYERS)
    for key, value in changes.items():
        setattr(config, key, value)
    path = io.save(spec, tmp_path / "a.safetensors")
    _refused(path, match, model=ModelIdentity.from_config(config))


def test_missing_and_extra_site_tensors_are_refused(spec, tmp_path):
    tensors, header, meta = _tensors_and_header(spec)
    missing = {k: v for k, v in tensors.items() if k != "final_norm.b"}
    _refused(_write(tmp_path / "m.safetensors", missing, header, meta), r"no tensors: \['final_norm.b'\]")
    extra = {**tensors, "layers.9.input_norm.a": torch.zeros(64)}
    _refused(_write(tmp_path / "e.safetensors", extra, header, meta), "not listed in the metadata")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_refused(spec, tmp_path, bad):
    tensors, header, meta = _tensors_and_header(spec)
    tensors["layers.1.input_norm.b"][3] = bad
    _refused(_write(tmp_path / "nan.safetensors", tensors, header, meta), "NaN or infinite")


def test_unsupported_architecture_is_refused(spec, tmp_path):
    tensors, header, meta = _tensors_and_header(spec)
    meta["identity"]["architecture"] = "GPT2LMHeadModel"
    _refused(_write(tmp_path / "gpt2.safetensors", tensors, header, meta), "'GPT2LMHeadModel' has no steering site map")


@pytest.mark.parametrize("edit, match", [
    (lambda t, m: t.update({k: v.half() for k, v in t.items()}), "float32"),
    (lambda t, m: t.update({k: v[:32].clone() for k, v in t.items()}), r"shape \(5, 32\)"),
    (lambda t, m: m.update(method="magic"), "unknown method 'magic'"),
    (lambda t, m: m.pop("identity"), "metadata is malformed"),
])
def test_inconsistent_contents_are_refused(spec, tmp_path, edit, match):
    tensors, header, meta = _tensors_and_header(spec)
    edit(tensors, meta)
    _refused(_write(tmp_path / "bad.safetensors", tensors, header, meta), match)


def test_a_missing_file_is_refused(tmp_path):
    _refused(tmp_path / "absent.safetensors", "no such adapter file")


@pytest.mark.parametrize("arch", ARCHS)
def test_site_maps_resolve_to_distinct_norm_modules(arch):
    model = small_model(arch)
    modules = [model.get_submodule(module_path(arch, site)) for site in all_sites(2)]
    assert len({id(m) for m in modules}) == len(modules) == 5
    assert all(type(m).__name__.endswith("RMSNorm") for m in modules)
    layer = model.model.layers[1]
    mlp_norm = layer.pre_feedforward_layernorm if arch == "Gemma3ForCausalLM" else layer.post_attention_layernorm
    assert model.get_submodule(module_path(arch, "layers.1.post_attention_norm")) is mlp_norm, \
        "post_attention_norm must be the norm that feeds the MLP"
    assert model.get_submodule(module_path(arch, "final_norm")) is model.model.norm


def test_specs_for_every_family_round_trip(tmp_path):
    for arch in ARCHS:
        spec = make_spec(arch)
        assert io.load(io.save(spec, tmp_path / f"{arch}.safetensors"), model=spec.meta.identity).meta == spec.meta
