"""User-facing errors: one line, exit status 2, no traceback."""


class UserError(Exception):
    """A problem with what the user gave us (file, config key, flag); the message names it."""

    exit_status = 2


class ConfigError(UserError):
    """An invalid configuration value; the message starts with the dotted key."""
