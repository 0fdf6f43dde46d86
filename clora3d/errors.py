"""Error types raised for problems a user can cause (bad config, missing data, bad checkpoint).

Each carries a message that names the offending file, key or shape and what was expected, so that
tools can print it on one line instead of a traceback.
"""


class Clora3dError(Exception):
    """Base class of every user-facing clora3d error."""


class ConfigError(Clora3dError, ValueError):
    """A config file or override is invalid (unknown key, bad value, missing base file)."""


class DataError(Clora3dError, FileNotFoundError):
    """A data set file or folder is missing or malformed."""


class CheckpointError(Clora3dError, RuntimeError):
    """A checkpoint does not match the model it is loaded into, or cannot be read."""


class UnsafePickleError(Clora3dError, ValueError):
    """A pickle file references a global outside the allowed set; it was not executed."""


#: What the command-line tools report as one ``error: ...`` line (exit code 2) instead of a traceback:
#: clora3d's own errors plus the stdlib ones the file readers raise for a missing or malformed input.
USER_ERRORS: tuple[type[BaseException], ...] = (Clora3dError, FileNotFoundError, ValueError)
