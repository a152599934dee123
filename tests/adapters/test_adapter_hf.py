"""Applying adapters to Hugging Face models (adapters/hf.py) on tiny random models of each family."""

import pytest
import torch

from adapters.hf import Steering, attach
from adapters.sites import module_path
from adapters.spec import AdapterFormatError, ModelIdentity
from tests.adapters.adapter_helpers import ARCHS, random_steering, small_model

SEQ = 7


def _ids(batch: int = 1, seed: int = 0, vocab: int = 512) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(3, vocab, (batch, SEQ), generator=gen)


@torch.no_grad()
def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    return model(input_ids=ids).logits


def _hook_count(model) -> int:
    return sum(len(m._forward_hooks) for m in model.modules())


@pytest.mark.parametrize("arch", ARCHS)
def test_strength_zero_is_bit_identical_to_the_unmodified_model(arch):
    model = small_model(arch)
    ids = _ids(2)
    base = _logits(model, ids)
    with attach(model, random_steering(model), strength=0.0):
        steered = _logits(model, ids)
    assert torch.equal(steered, base), "strength 0 must not change a single bit of the logits"
    with attach(model, random_steering(model), strength=1.0):
        assert not torch.allclose(_logits(model, ids), base), "strength 1 must change the logits"


@pytest.mark.parametrize("arch", ARCHS)
def test_hooked_site_equals_the_formula_computed_by_hand(arch):
    model = small_model(arch)
    steering = random_steering(model)
    s = 0.7
    captured = {}
    for row, site in enumerate(steering.sites):
        norm = model.get_submodule(module_path(arch, site))
        # Registered before attach: sees the norm's own output; the one registered after sees the steered one.
        norm.register_forward_hook(lambda m, i, o, site=site: captured.__setitem__((site, "h"), o.detach()))
    with attach(model, steering, strength=s):
        for site in steering.sites:
            norm = model.get_submodule(module_path(arch, site))
            norm.register_forward_hook(lambda m, i, o, site=site: captured.__setitem__((site, "y"), o.detach()))
        _logits(model, _ids())
    for row, site in enumerate(steering.sites):
        h, y = captured[(site, "h")].double(), captured[(site, "y")].double()
        a, b = steering.a[row].detach().double(), steering.b[row].detach().double()
        expected = h + s * (a * h + b)
        # fp32 evaluation of a formula done here in float64: a few ulps of the activations' magnitude.
        torch.testing.assert_close(y, expected, rtol=1e-5, atol=1e-5, msg=f"site {site} is not h + s(a*h + b)")


@pytest.mark.parametrize("arch", ("LlamaForCausalLM", "Gemma3ForCausalLM"))
def test_batched_mixed_strengths_equal_each_row_alone(arch):
    model = small_model(arch)
    steering = random_steering(model)
    ids = _ids(3, seed=5)  # equal-length rows: no padding, no attention mask
    strengths = torch.tensor([0.0, 0.5, 1.0])
    with attach(model, steering, strength=strengths):
        batched = _logits(model, ids)
    for row, s in enumerate(strengths.tolist()):
        with attach(model, steering, strength=s):
            alone = _logits(model, ids[row:row + 1])
        # Batched and single-row matmuls may sum in another order: fp32 rounding only.
        torch.testing.assert_close(batched[row:row + 1], alone, rtol=1e-5, atol=1e-5,
                                   msg=f"row {row} (strength {s}) differs from running it alone")
    base = _logits(model, ids[:1])
    torch.testing.assert_close(batched[:1], base, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch", ("LlamaForCausalLM", "Qwen3ForCausalLM"))
def test_greedy_generation_with_kv_cache_equals_without(arch):
    model = small_model(arch)
    steering = random_steering(model, scale=0.3)
    ids = _ids(2, seed=9)
    new_tokens = 6
    with attach(model, steering, strength=torch.tensor([0.4, 1.0])):
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, use_cache=True,
                             output_logits=True, return_dict_in_generate=True, pad_token_id=0)
        cached_tokens, cached_logits = out.sequences[:, ids.shape[1]:], torch.stack(out.logits, 1)
        seq = ids
        for step in range(new_tokens):  # no cache: the whole sequence again at every step
            logits = _logits(model, seq)[:, -1]
            torch.testing.assert_close(cached_logits[:, step], logits, rtol=1e-4, atol=1e-4,
                                       msg=f"step {step}: cached logits differ from uncached")
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], 1)
    assert torch.equal(cached_tokens, seq[:, ids.shape[1]:]), "greedy tokens differ with and without cache"


def test_strength_set_on_the_handle_between_forwards_takes_effect():
    model = small_model()
    steering, ids = random_steering(model), _ids()
    with attach(model, steering, strength=1.0) as handle:
        one = _logits(model, ids)
        handle.strength = 0.0
        zero = _logits(model, ids)
        handle.strength = torch.tensor([1.0])
        again = _logits(model, ids)
    assert torch.equal(zero, _logits(model, ids))
    torch.testing.assert_close(again, one, rtol=0, atol=0)


def test_detach_restores_the_model_exactly_even_after_an_exception():
    model = small_model()
    ids = _ids()
    before_logits = _logits(model, ids)
    before_state = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    with pytest.raises(RuntimeError, match="boom"), attach(model, random_steering(model), strength=1.0):
        _logits(model, ids)
        raise RuntimeError("boom")
    assert _hook_count(model) == 0, "hooks must be removed when the block raises"
    assert [p.requires_grad for p in model.parameters()] == flags, "requires_grad flags must be restored"
    assert all(torch.equal(before_state[k], v) for k, v in model.state_dict().items())
    assert torch.equal(_logits(model, ids), before_logits)


def test_gradients_reach_a_and_b_and_not_the_model():
    model = small_model()
    steering = Steering.zeros(ModelIdentity.from_config(model.config))  # training starts at identity map
    with attach(model, steering, strength=1.0):
        model(input_ids=_ids()).logits.logsumexp(-1).mean().backward()
    assert steering.a.grad is not None and steering.a.grad.abs().sum() > 0, "no gradient reached a"
    assert steering.b.grad is not None and steering.b.grad.abs().sum() > 0, "no gradient reached b"
    leaked = [n for n, p in model.named_parameters() if p.grad is not None]
    assert not leaked, f"the model must stay frozen, but these got gradients: {leaked[:3]}"
    assert all(p.requires_grad for p in model.parameters()), "requires_grad flags must be restored"


@pytest.mark.parametrize("dtype", (torch.bfloat16, torch.float16))
def test_half_precision_models_are_steered_in_their_dtype(dtype):
    model = small_model().to(dtype)
    steering, ids = random_steering(model), _ids()
    base = _logits(model, ids)
    seen = []
    model.model.norm.register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    with attach(model, steering, strength=0.0):
        assert torch.equal(_logits(model, ids), base), "strength 0 must be bit-identical in half precision"
    with attach(model, steering, strength=1.0):
        steered = _logits(model, ids)
    assert steered.dtype == dtype and torch.isfinite(steered).all() and not torch.equal(steered, base)
    assert set(seen) == {dtype}, "steering must hand activations back in the model's dtype"


def test_unmatched_site_raises_and_leaves_no_hook():
    model = small_model()
    steering = random_steering(model)
    del model.model.layers[1]  # the config still says 2 layers; sites of layer 1 have no module now
    unmatched = r"layers\.1\.input_norm.*model\.layers\.1\.input_layernorm"
    with pytest.raises(AdapterFormatError, match=unmatched), attach(model, steering):
        pass
    assert _hook_count(model) == 0


def test_attaching_to_another_model_is_refused():
    steering = random_steering(small_model())
    with pytest.raises(AdapterFormatError, match="hidden_size 64.*32"), attach(small_model(hidden=32), steering):
        pass
    with pytest.raises(AdapterFormatError, match="architecture"), attach(small_model("Qwen2ForCausalLM"), steering):
        pass


def test_per_row_strengths_must_match_the_batch():
    model = small_model()
    two_rows = torch.tensor([0.5, 1.0])
    with attach(model, random_steering(model), strength=two_rows), pytest.raises(ValueError, match="per batch row"):
        _logits(model, _ids(3))
    with pytest.raises(ValueError, match="finite"), attach(model, random_steering(model), strength=float("nan")):
        pass


def test_steering_round_trips_through_a_spec(spec):
    steering = Steering.from_spec(spec)
    back = steering.to_spec()
    assert back.sites == spec.sites and back.meta == spec.meta and back.version == spec.version
    assert torch.equal(back.a, spec.a) and torch.equal(back.b, spec.b)
    zeros = Steering.zeros(spec.meta.identity, ("final_norm",))
    assert zeros.a.shape == (1, spec.meta.identity.hidden_size) and not zeros.a.any()


def test_a_loaded_spec_attaches_directly(spec):
    model, ids = small_model(), _ids()
    with attach(model, spec, strength=0.5):
        direct = _logits(model, ids)
    with attach(model, Steering.from_spec(spec), strength=0.5):
        assert torch.equal(direct, _logits(model, ids))
    assert not torch.equal(direct, _logits(model, ids))
