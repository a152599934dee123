"""One short DSO run on the real SmolLM2-135M-Instruct lowers bias on held-out ambiguous prompts.

Slow (about 2-4 minutes on one core): obtains the model with `fairsteer model pull` (skips when that is
impossible here), trains 8 steps on 120 generated ambiguous prompts, and compares Per-Occupation Bias of
the base model and the adapter at strength 1 on 40 held-out prompts (one per occupation, both orders).
"""

import pytest
import torch

from adapters.hf import Steering, model_identity
from trainer import data, dso, evaluate, rewards, task
from trainer.config import DSOConfig


@pytest.fixture(scope="module")
def smollm2():
    from adapters.model_store import ModelPullError, pull

    try:
        path = pull("smollm2-135m-instruct")
    except (ModelPullError, OSError) as exc:
        pytest.skip(f"SmolLM2 could not be obtained here: {exc}")
    return task.load_model(str(path))


@pytest.mark.slow
def test_short_dso_run_lowers_held_out_bias(smollm2):
    torch.set_num_threads(1)
    model, tokenizer, pad_id = smollm2
    # The shipped recipe (no answer-KL anchor), shortened: 8 steps at twice its learning rate.
    cfg = DSOConfig(n_train=120, n_eval=40, steps=8, lr=1e-3, occupations_per_step=6, resolvable_per_step=1,
                    answer_kl_coef=0.0)
    splits = data.split(data.load("generated"), cfg.n_train, cfg.n_eval, cfg.seed)
    steering = Steering.zeros(model_identity(model))
    sampler = dso.BatchSampler(splits.train, splits.train_resolvable, tokenizer, cfg)
    optimizer = torch.optim.Adam(steering.parameters(), lr=cfg.lr)
    dso.train_steps(model, steering, sampler, rewards.MajorityTracker(), optimizer, cfg, pad_id, start=0)

    held_out = task.coref_prompts(tokenizer, splits.eval_ambiguous)
    trained = {p.ids for groups in sampler.by_occ.values() for pair in groups for p in pair}
    assert not {p.ids for p in held_out} & trained, "held-out prompts must not be trained on"
    base = evaluate.coref_metrics(evaluate.score(model, held_out, pad_id)[0], held_out, "ambiguous")
    steered = evaluate.coref_metrics(evaluate.score(model, held_out, pad_id, steering, 1.0)[0], held_out,
                                     "ambiguous")
    assert steered["per_occupation_bias"] < 0.8 * base["per_occupation_bias"], (base, steered)
