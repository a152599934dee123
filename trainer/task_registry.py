"""The two tasks behind one interface: one table from task name to its data, prompts, metrics and
prompting instruction. Training (`trainer.dso`, `trainer.baselines`) and evaluation (`trainer.evaluate`)
reach a task only through here.

    coreference   trainer.coreference + trainer.data: who does the pronoun refer to; each example in both
                  option orders (two prompts, adjacent) or, with both_orders False, one order
    continuation  trainer.continuation: the gender of the next pronoun; one prompt per item
"""

from collections.abc import Callable
from dataclasses import dataclass, replace

import torch

from trainer import continuation, coreference, data, metrics
from trainer.config import TASKS, TaskName
from trainer.data import Splits
from trainer.prompts import Kind, Prompt


@dataclass(frozen=True)
class Task:
    """What training and evaluation need of a task.

    Attributes:
        load: `--data` SPEC -> items ("generated" is built in for both tasks).
        split: (items, n_train, n_eval, seed, holdout_occupations) -> the deterministic `Splits`.
        prompts: (tokenizer, items, both_orders, instruction) -> prompts; both_orders only matters where
            a prompt lists its options (coreference).
        metrics: (probs (N, 3), prompts, kind) -> the metrics of one kind (`trainer.metrics`).
        instruction: the debiasing preface of the evaluation's prompting-only reference row.
    """

    load: Callable[[str | None], list]
    split: Callable[..., Splits]
    prompts: Callable[..., list[Prompt]]
    metrics: Callable[[torch.Tensor, list[Prompt], Kind], dict]
    instruction: str


def _continuation_prompts(tokenizer, items: list, both_orders: bool = True,
                          instruction: str = "") -> list[Prompt]:
    """One prompt per item (its options are not listed, so there is no order); the instruction prefixes
    the raw text."""
    if instruction:
        items = [replace(i, prompt=f"{instruction}\n{i.prompt}") for i in items]
    return continuation.prompts(tokenizer, items)


REGISTRY: dict[TaskName, Task] = {
    "coreference": Task(load=data.load, split=data.split, prompts=coreference.prompts,
                        metrics=metrics.coreference_metrics, instruction=coreference.INSTRUCTION),
    "continuation": Task(load=continuation.load, split=continuation.split,
                         prompts=_continuation_prompts, metrics=metrics.continuation_metrics,
                         instruction=continuation.INSTRUCTION),
}
assert tuple(REGISTRY) == TASKS, "every task name in trainer.config.TaskName needs an entry here"


def load_splits(task_name: TaskName, spec: str, n_train: int, n_eval: int, seed: int,
                holdout: tuple[str, ...]) -> Splits:
    """The deterministic train/eval split of a task's data; training and evaluation both call this."""
    task = REGISTRY[task_name]
    return task.split(task.load(spec), n_train, n_eval, seed, holdout_occupations=holdout)


def prompts(tokenizer, task_name: TaskName, items: list, both_orders: bool = True,
            instruction: str = "") -> list[Prompt]:
    """The prompts of `items`; `instruction` prefixes each (the evaluation's prompting row)."""
    return REGISTRY[task_name].prompts(tokenizer, items, both_orders=both_orders, instruction=instruction)
