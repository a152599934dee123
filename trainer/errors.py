"""The trainer's own exceptions: problems with settings or data a user can fix (the CLI prints them).

    TrainerError   base class; `fairsteer` prints any of them as one line, exit status 2
      ConfigError  a setting (flag, YAML key, model, checkpoint to resume) that cannot be used
      DataError    a data source or file (coreference, continuation, MMLU) that cannot be read or split
"""


class TrainerError(ValueError):
    """A training or evaluation setting, or a data file, that cannot be used; the message names the fix."""


class ConfigError(TrainerError):
    """A setting that cannot be used: the message names the setting, the value and what to give instead."""


class DataError(TrainerError):
    """Data that cannot be used: the message names the file (and line) and what a usable one holds."""
