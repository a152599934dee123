"""The shipped adapter meets the project's acceptance bar on held-out prompts of the real model.

Slow (about a minute on one core): SmolLM2-135M-Instruct (`fairsteer model pull`) with
`adapters/shipped/smollm2-135m-instruct-dso.safetensors` at strength 1, on 240 held-out continuation prompts
(wordings and gender cues never trained on, 6 per occupation) and their stated-gender versions: the bias falls with its 95%
interval below the base value, stated genders are kept, the share of gendered next words hardly moves, and
KL to the base model on generic text is at most 0.05 nats/token.
"""

from pathlib import Path

import pytest
import torch

from adapters import io
from adapters.hf import Steering, model_identity
from trainer import continuation, evaluate, generic, metrics

SHIPPED = Path(__file__).resolve().parents[2] / "adapters" / "shipped" / "smollm2-135m-instruct-dso.safetensors"


@pytest.mark.slow
@pytest.mark.xfail(strict=True, reason=(
    "issue 15: on held-out gender cues (trainer/cues.py) the shipped adapter loses 9 points of stated-gender "
    "accuracy (README: 0.752 -> 0.659); strict, so shipping an adapter that passes makes this fail: then "
    "remove the mark"))
def test_shipped_adapter_meets_the_acceptance_bar_on_held_out_prompts(smollm2):
    torch.set_num_threads(1)
    model, tokenizer, pad_id = smollm2
    spec = io.load(SHIPPED, model_identity(model))
    assert spec.meta.method == "dso" and spec.meta.training["task"] == "continuation"
    assert spec.meta.calibration, "the evaluation's table travels with the adapter"
    steering = Steering.from_spec(spec)
    splits = continuation.split(continuation.generate(), 0, 240, seed=spec.meta.training["seed"])
    amb = continuation.prompts(tokenizer, splits.eval_ambiguous)
    res = continuation.prompts(tokenizer, splits.eval_resolvable)

    def measure(strength):
        probs = evaluate.score(model, amb + res, pad_id, steering, strength)[0]
        return {**metrics.continuation_metrics(probs[:len(amb)], amb, "ambiguous"),
                **metrics.continuation_metrics(probs[len(amb):], res, "resolvable")}

    base, steered = measure(0.0), measure(1.0)
    assert base["per_occupation_bias"] > base["per_occupation_bias_noise_floor_hi"]
    assert steered["per_occupation_bias_hi"] < base["per_occupation_bias"], (base, steered)
    assert steered["per_occupation_bias"] < 0.3 * base["per_occupation_bias"]
    se = (base["unambiguous_accuracy_se"] ** 2 + steered["unambiguous_accuracy_se"] ** 2) ** 0.5
    assert steered["unambiguous_accuracy"] >= base["unambiguous_accuracy"] - 1.96 * se
    assert abs(steered["other_rate"] - base["other_rate"]) < 0.05
    kl, _ = evaluate.generic_kl(model, generic.prompts(tokenizer, "eval"), pad_id, steering, 1.0)
    assert kl <= 0.05, f"KL to base on generic text {kl:.4f} nats/token"
