"""The two tasks behind one interface: their data split and their prompts (`trainer.config.TASKS`).

    coreference   trainer.data + trainer.task: who does the pronoun refer to; each example in both
                  option orders (two prompts, adjacent) or, with both_orders False, one order
    continuation  trainer.continuation: the gender of the next pronoun; one prompt per item
"""

from dataclasses import replace

from trainer import task


def load_splits(task_name: str, spec: str, n_train: int, n_eval: int, seed: int, holdout: tuple[str, ...]):
    """The deterministic train/eval split of a task's data; training and evaluation both call this."""
    if task_name == "continuation":
        from trainer import continuation
        return continuation.split(continuation.load(spec), n_train, n_eval, seed, holdout_occupations=holdout)
    from trainer import data
    return data.split(data.load(spec), n_train, n_eval, seed, holdout_occupations=holdout)


def prompts(tokenizer, task_name: str, items: list, both_orders: bool = True,
            instruction: str = "") -> list[task.Prompt]:
    """The prompts of `items`; `instruction` prefixes each (the evaluation's prompting row)."""
    if task_name == "coreference":
        return task.coref_prompts(tokenizer, items, both_orders=both_orders, instruction=instruction)
    from trainer import continuation
    if instruction:
        items = [replace(i, prompt=f"{instruction}\n{i.prompt}") for i in items]
    return continuation.prompts(tokenizer, items)
