"""User-facing errors: raised for bad input and reported by the CLI as one line, exit code 2.

Anything that is not an `EchoError` is a bug and keeps its traceback.
"""


class EchoError(Exception):
    """A problem with the caller's input (file, config, argument), stated in one line."""


class ConfigError(EchoError):
    """A config file or value is invalid (unknown key, wrong type, missing file)."""


class InputError(EchoError):
    """An input file (image, checkpoint, dataset) is missing, corrupt or unsupported."""
