"""The server's own exception for start-up problems a user can fix (the CLI prints it in one line)."""


class ServeConfigError(ValueError):
    """A `fairsteer serve` setting, file or environment that cannot be served; the message names the fix."""
