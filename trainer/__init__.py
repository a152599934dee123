"""The offline trainer and evaluator: adapters for fairness steering, and what they cost.

Tasks (what is asked, and of which data):
    prompts.py        Prompt, batching, reading option probabilities at the answer position (every task)
    occupations.py    the 40 occupations and BLS female shares: what makes an answer stereotypical
    coreference.py    Example, its pro/anti labels, the coreference question and its prompts
    data.py           coreference sources (generated, SynthBias, WinoBias) and the deterministic split
    templates.py      the generated coreference sentences (the default data)
    continuation.py   the continuation task: items, data, split and prompts
    mmlu.py           MMLU questions and prompts (capability); generic.py: generic text for the KL term
    task_registry.py  one table: task name -> data, split, prompts, metrics, prompting instruction
Training:
    config.py         DSOConfig and the typed modes (TaskName, Estimator); flags and YAML
    rewards.py        the DSO majority-flip reward; dso.py: the batches, the loss and one step
    session.py        a DSO run: memory plan, checkpoints (checkpoint.py), log and progress bar, Ctrl-C
                      (progress.py)
    baselines.py      CAA and mean-difference vectors in the same adapter format
    training.py       one table: method name -> training function; run.py: Run, minutes and memory
    base_model.py     load the frozen base model; placement.py: device, dtype, several GPUs, activation
                      checkpointing; memory.py: a step's memory, estimated and measured
Evaluation:
    metrics.py        bias and capability metrics from answer distributions (pure functions)
    evaluate.py       score a model with and without adapters, per strength; report.py: report.json, plot
Errors a user can fix are `trainer.errors.ConfigError` and `DataError` (both `TrainerError`); the command
line (cli/train.py, cli/eval.py) prints them. Nothing here imports the server or the command line.
"""
