"""DSO on a tiny random model: the objective falls, and the adapter file is what the server loads."""

import json

import pytest
import torch
from tiny_models import save_tiny_model, tiny_model, tiny_tokenizer

from adapters import io
from adapters.hf import Steering, model_identity
from cli.main import main
from trainer import dso, rewards
from trainer.config import DSOConfig
from trainer.prompts import Prompt
from trainer.task_registry import load_splits


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    return save_tiny_model(tmp_path_factory.mktemp("tiny") / "model")


def _setup(cfg: DSOConfig):
    model, tok = tiny_model(), tiny_tokenizer()
    splits = load_splits(cfg.task, "generated", cfg.n_train, cfg.n_eval, cfg.seed, ())
    sampler = dso.BatchSampler(splits.train, splits.train_resolvable, tok, cfg)
    return model, sampler


@pytest.mark.parametrize("task_name", ["coreference", "continuation"])
def test_a_few_steps_lower_the_objective_on_a_fixed_batch(task_name):
    cfg = DSOConfig(task=task_name, n_train=80, n_eval=10, steps=12, lr=0.01, occupations_per_step=4,
                    kl_coef=0.1, answer_kl_coef=0.1)
    model, sampler = _setup(cfg)
    steering = Steering.zeros(model_identity(model))
    tracker = rewards.MajorityTracker(cfg.majority_momentum, cfg.other_reward)
    batch = sampler.batch(0)
    before = dso.objective(model, steering, batch, tracker, cfg, pad_id=0)["objective"].item()
    optimizer = torch.optim.Adam(steering.parameters(), lr=cfg.lr)
    for _ in range(cfg.steps):
        out = dso.objective(model, steering, batch, tracker, cfg, pad_id=0, update_majority=False)
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    after = dso.objective(model, steering, batch, tracker, cfg, pad_id=0, update_majority=False)
    assert after["objective"].item() < before - 1e-3, ("training steps must lower the DSO objective", before,
                                                       after["objective"].item())
    assert steering.a.abs().sum() > 0 and steering.b.abs().sum() > 0


def test_batches_hold_both_orders_resolvable_items_and_generic_text():
    cfg = DSOConfig(n_train=80, n_eval=10, occupations_per_step=4, resolvable_per_step=2, generic_per_step=3)
    _, sampler = _setup(cfg)
    batch = sampler.batch(0)
    amb = batch.prompts[:batch.num_ambiguous]
    assert len({p.occupation for p in amb}) == 4 and len(amb) == 8, "one example per occupation, both orders"
    assert all(a.index == b.index and a.labels == b.labels[::-1] for a, b in zip(amb[::2], amb[1::2]))
    assert batch.num_resolvable == 4 and len(batch.prompts) == 8 + 4 + 3


def test_order_penalty_charges_answering_by_position():
    examples = dso._groups(tiny_tokenizer(), load_splits("coreference", "generated", 8, 2, 0, ()).train,
                           "coreference")
    prompts: list[Prompt] = [p for pair in examples[:4] for p in pair]
    always_first = rewards.by_status(torch.tensor([[0.9, 0.0, 0.1]] * len(prompts)), prompts)
    assert dso.order_gap(always_first, prompts).item() == pytest.approx(1.0)
    always_pro = torch.tensor([[0.7, 0.1, 0.2]] * len(prompts))  # (pro, anti, other), whatever the order
    assert dso.order_gap(always_pro, prompts).item() == pytest.approx(0.0)


def test_sample_estimator_trains_too():
    cfg = DSOConfig(n_train=40, n_eval=10, steps=2, lr=0.01, occupations_per_step=4, estimator="sample")
    model, sampler = _setup(cfg)
    steering = Steering.zeros(model_identity(model))
    tracker = rewards.MajorityTracker()
    optimizer = torch.optim.Adam(steering.parameters(), lr=cfg.lr)
    assert dso.train_steps(model, steering, sampler, tracker, optimizer, cfg, 0, start=0) == 2
    assert tracker.baseline, "the sample estimator keeps a per-occupation reward baseline"
    assert steering.b.abs().sum() > 0


def test_train_command_writes_an_adapter_the_server_loader_accepts(tiny_dir, tmp_path):
    out = tmp_path / "fair.safetensors"
    argv = ["train", "--model", str(tiny_dir), "--out", str(out), "--steps", "3", "--n-train", "40",
            "--occupations-per-step", "4", "--checkpoint-every", "1"]
    assert main(argv) == 0
    identity = model_identity(tiny_model())
    spec = io.load(out, identity)
    assert spec.meta.method == "dso" and spec.meta.training["steps_done"] == 3
    assert spec.meta.training["occupations_per_step"] == 4 and "peak_rss_mb" in spec.meta.training
    again = io.load(out)
    assert torch.equal(again.a, spec.a) and again.version == spec.version
    log = [json.loads(line) for line in (tmp_path / "fair.safetensors.log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [1, 2, 3]
    # Resuming to 5 steps continues from the checkpoint rather than starting over.
    assert main(argv[:-6] + ["--steps", "5", "--n-train", "40", "--occupations-per-step", "4", "--resume"]) == 0
    assert io.load(out).meta.training["steps_done"] == 5


def test_continuation_train_and_eval_report_the_new_metrics_and_acceptance(tiny_dir, tmp_path):
    adapter = tmp_path / "cont.safetensors"
    assert main(["train", "--task", "continuation", "--model", str(tiny_dir), "--out", str(adapter),
                 "--steps", "2", "--n-train", "40", "--occupations-per-step", "4"]) == 0
    assert io.load(adapter).meta.training["task"] == "continuation"
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_dir), "--adapter", str(adapter), "--strengths", "0,1",
                 "--n-eval", "40", "--out", str(out)]) == 0, "the task comes from the adapter"
    report = json.loads((out / "report.json").read_text())
    assert report["task"] == "continuation" and set(report["methods"]) == {"base", "dso", "prompting"}
    row = report["methods"]["dso"][-1]
    for key in ("per_occupation_bias_lo", "per_occupation_bias_hi", "per_occupation_bias_noise_floor",
                "bls_correlation", "other_rate", "unambiguous_accuracy", "generic_kl", "kl_to_base"):
        assert key in row, key
    assert row["n_ambiguous"] == 40 and row["generic_kl"] > 0
    (check,) = report["acceptance"]["dso"]
    assert check["strength"] == 1.0 and isinstance(check["acceptable"], bool)


def test_baselines_and_eval_report_with_calibration(tiny_dir, tmp_path):
    files = []
    for method in ("caa", "mean-diff"):
        files.append(tmp_path / f"{method}.safetensors")
        assert main(["train", "--method", method, "--model", str(tiny_dir), "--out", str(files[-1]),
                     "--n-train", "40"]) == 0
    caa = io.load(files[0])
    assert caa.meta.method == "caa" and len(caa.sites) == 1 and torch.all(caa.a == 0)
    version = caa.version
    out = tmp_path / "eval"
    assert main(["eval", "--model", str(tiny_dir), "--adapter", str(files[0]), "--adapter", str(files[1]),
                 "--strengths", "0,1", "--n-eval", "12", "--out", str(out), "--write-calibration"]) == 0
    report = json.loads((out / "report.json").read_text())
    assert set(report["methods"]) == {"base", "caa", "mean_diff", "prompting"}
    row = report["methods"]["caa"][-1]
    for key in ("per_occupation_bias", "stereotype_gap", "unambiguous_accuracy", "unambiguous_accuracy_pro",
                "unambiguous_accuracy_anti", "other_rate", "kl_to_base"):
        assert key in row and f"{key}_se" in row
    assert (out / "tradeoff.png").stat().st_size > 1000
    assert main(["eval", "--combine", str(out), str(out), "--out", str(tmp_path / "both")]) == 0
    combined = json.loads((tmp_path / "both" / "report.json").read_text())
    assert combined["methods"] == report["methods"], "combining a run with itself adds nothing"
    calibrated = io.load(files[0])
    assert [r["strength"] for r in calibrated.meta.calibration] == [0.0, 1.0]
    assert calibrated.version == version, "calibration is metadata: the adapter's version must not change"


@pytest.mark.parametrize("argv, message", [
    (["eval", "--model", "M", "--strengths", "0,x", "--out", "D"], "--strengths"),
    (["train", "--model", "M", "--out", "a.bin"], ".safetensors"),
    (["train", "--model", "M", "--out", "a.safetensors", "--estimator", "magic"], "estimator"),
])
def test_user_errors_exit_2_with_the_fix(argv, message, capsys):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "eval"])
def test_help_lists_every_setting(command, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([command, "--help"])
    assert exit_.value.code == 0
    out = capsys.readouterr().out
    assert "--model" in out and ("--answer-kl-coef" in out if command == "train" else "--strengths" in out)


def test_yaml_config_is_overridden_by_flags_and_unknown_keys_are_named(tmp_path):
    import argparse

    from trainer.config import add_flags, from_args
    from trainer.errors import ConfigError

    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_flags(parser)
    (tmp_path / "c.yaml").write_text("steps: 7\nlr: 0.002\n")
    cfg = from_args(parser.parse_args(["--config", str(tmp_path / "c.yaml"), "--lr", "0.01"]))
    assert (cfg.steps, cfg.lr) == (7, 0.01), "flags override the YAML file, which overrides defaults"
    (tmp_path / "bad.yaml").write_text("stepz: 7\n")
    with pytest.raises(ConfigError, match="stepz"):
        from_args(parser.parse_args(["--config", str(tmp_path / "bad.yaml")]))
