"""Errors meant for users: one sentence naming the file, line, field or flag and what to do."""


class UserError(Exception):
    """Bad input from the user. The CLI prints the message alone (no traceback) and exits with status 2."""


class ConfigError(UserError, ValueError):
    """A config file, config field or preset name that we cannot use."""


class CheckpointError(UserError, OSError):
    """A checkpoint that is missing, corrupt or of an architecture we do not support."""


class DataError(UserError, ValueError):
    """A data file we cannot read: malformed line, missing field, wrong format."""
