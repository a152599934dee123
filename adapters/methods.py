"""The methods an adapter file may name (`AdapterMeta.method`): the one table, light to import (no torch).

    dso          Direct Steering Optimization, trained by `fairsteer train --method dso` (trainer.dso)
    caa          Contrastive Activation Addition, `--method caa` (trainer.baselines)
    mean_diff    difference of class means, `--method mean-diff` (trainer.baselines)
    random       untrained, a and b drawn at random (`adapters.spec.random_spec`): benchmarks, plumbing tests
    constructed  untrained, a and b set by hand: tests

The trainer maps each trained method to its training function (`trainer.training.TRAINERS`) and the
command line offers exactly those; the server never branches on the method.
"""

from typing import Literal, get_args

TrainedMethod = Literal["dso", "caa", "mean_diff"]
TRAINED_METHODS: tuple[TrainedMethod, ...] = get_args(TrainedMethod)
METHODS: tuple[str, ...] = (*TRAINED_METHODS, "random", "constructed")
