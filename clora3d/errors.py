"""Error types raised for problems a user can cause (bad config, missing data, bad checkpoint).

Each carries a message that names the offending file, key or shape and what was expected, so that
tools can print it on one line instead of a traceback.
"""

from __future__ import annotations

from collections.abc import Callable


class Clora3dError(Exception):
    """Base class of every user-facing clora3d error."""


class ConfigError(Clora3dError, ValueError):
    """A config file or override is invalid (unknown key, bad value, missing base file)."""


class DataError(Clora3dError, FileNotFoundError):
    """A data set file or folder is missing or malformed."""


class CheckpointError(Clora3dError, RuntimeError):
    """A checkpoint does not match the model it is loaded into, or cannot be read."""


class CheckpointNotFoundError(CheckpointError, FileNotFoundError):
    """A checkpoint, adapter or other torch file to load does not exist (also a ``FileNotFoundError``)."""


class UnsafePickleError(Clora3dError, ValueError):
    """A pickle file references a global outside the allowed set; it was not executed."""


class UnsafeCheckpointError(UnsafePickleError, CheckpointError):
    """A checkpoint file references Python objects outside torch's weights-only allow-list.

    It was NOT executed. Both an ``UnsafePickleError`` and a ``CheckpointError``.
    """


class StorageError(Clora3dError, OSError):
    """A file could not be written (full disk, permissions, a directory in the way); the previous
    file under that name is unchanged. ``errno`` / ``strerror`` / ``filename`` are those of the
    underlying OSError; ``str()`` is the full message."""

    def __str__(self) -> str:
        return str(self.args[0]) if len(self.args) == 1 else OSError.__str__(self)


#: What the command-line tools report as one ``error: ...`` line (exit code 2) instead of a traceback:
#: clora3d's own errors plus the stdlib ones raised for a missing, unreadable or malformed input
#: (OSError covers a directory where a file belongs, permissions, a full disk; UnicodeError a
#: non-UTF-8 text file; RecursionError an absurdly nested input).
USER_ERRORS: tuple[type[BaseException], ...] = (Clora3dError, OSError, ValueError, UnicodeError, RecursionError)

#: longest message a tool prints; longer ones (a huge value echoed back) are cut
MAX_MESSAGE_CHARS = 2000


def format_user_error(e: BaseException) -> str:
    """The one-line ``error: ...`` text for a user error: names the file for OS errors, never
    longer than :data:`MAX_MESSAGE_CHARS`."""
    if isinstance(e, RecursionError):
        msg = (
            "input is nested too deeply to process (a config or data file with thousands of nested levels); flatten it"
        )
    elif isinstance(e, UnicodeDecodeError):
        msg = f"a text file is not valid UTF-8 ({e.reason} at byte {e.start}); save it as UTF-8"
    elif isinstance(e, OSError) and not isinstance(e, Clora3dError) and e.filename is not None:
        kind = {
            IsADirectoryError: "is a directory, expected a file",
            NotADirectoryError: "a part of the path is not a directory",
            FileNotFoundError: "not found",
            PermissionError: "permission denied",
        }.get(type(e), e.strerror or str(e))
        msg = f"{e.filename}: {kind}"
    else:
        msg = str(e) or type(e).__name__
    if len(msg) > MAX_MESSAGE_CHARS:
        msg = msg[:MAX_MESSAGE_CHARS] + f"... [{len(msg) - MAX_MESSAGE_CHARS} more characters cut]"
    return f"error: {msg}"


def run_tool(main: Callable[[], int | None]) -> int:
    """Run a tool's body: a user error is one ``error: ...`` line on stderr and exit code 2."""
    import sys

    try:
        rc = main()
    except USER_ERRORS as e:
        print(format_user_error(e), file=sys.stderr)
        return 2
    return int(rc or 0)
