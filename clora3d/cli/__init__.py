"""The ``clora3d`` command line: one entry point for the applications built on the library.

    clora3d [-v|-q] COMMAND [options]          (installed console script)
    python -m clora3d [-v|-q] COMMAND ...      (the same, without the script)
    python tools/COMMAND.py [options]          (the same command, from a checkout: tools/ wraps these)
    python -m clora3d                          (no command: the version and which kernels are active)

Commands: train, evaluate, fewshot (:mod:`clora3d.cli.runs`); infer, export, visualize
(:mod:`clora3d.cli.files`); flops, make-synthetic (:mod:`clora3d.cli.apps`); doctor
(:mod:`clora3d.cli.doctor`). ``clora3d COMMAND --help`` lists a command's options.

Output: what a command was asked for (a table, a JSON summary, a file path, the doctor's report)
goes to stdout, so it can be piped or redirected; messages about the work (progress, what was
written where, warnings) go through stdlib ``logging`` to stderr, configured here once per
invocation: INFO by default, ``-v`` DEBUG, ``-q`` warnings only, ``-qq`` errors only (ranks other
than 0 of a distributed run: warnings only). Library code only logs; it never configures logging.

Errors and exit codes, the same for every command (one path, :func:`clora3d.errors.run_tool`):

    0    success
    1    the doctor found clora3d.ops unusable; or an internal error (a traceback: a bug, please
         report it)
    2    a user error (bad config, missing or malformed file, bad checkpoint): one ``error: ...``
         line on stderr, no traceback; also bad command-line usage (argparse) and, for ``infer``,
         input files that could not be read (each one line; every readable file is still classified)
    130  interrupted (Ctrl-C); ``train`` continues with ``--resume``
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

__all__ = ["Command", "main", "tool_main", "parse_args", "build_parser", "configure_logging", "commands"]


@dataclass(frozen=True)
class Command:
    """One subcommand: its name, one-line help, longer description (usage examples), how to add its
    arguments to a parser and how to run it (``run(args, parser) -> exit code``). ``on_interrupt``
    is what Ctrl-C prints after ``interrupted``."""

    name: str
    help: str
    description: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace, argparse.ArgumentParser], int | None]
    on_interrupt: str = ""


def commands() -> dict[str, Command]:
    """Every subcommand by name (importing the command modules is cheap: no torch at import)."""
    from clora3d.cli import apps, doctor, files, runs

    out: dict[str, Command] = {}
    for mod in (runs, files, apps, doctor):
        for cmd in mod.COMMANDS:
            out[cmd.name] = cmd
    return out


# ------------------------------------------------------------------------------------------------
# logging
# ------------------------------------------------------------------------------------------------
class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time of each message (so a redirected or captured
    stderr is honoured)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):  # type: ignore[override]
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ assigns it; the property ignores it
        pass


class _Formatter(logging.Formatter):
    """INFO and DEBUG as the bare message; warnings and errors prefixed with their level."""

    def format(self, record: logging.LogRecord) -> str:
        msg = super().format(record)
        return msg if record.levelno < logging.WARNING else f"{record.levelname.lower()}: {msg}"


def _level(verbosity: int) -> int:
    if os.environ.get("RANK", "0") != "0":  # other ranks of a distributed run: problems only
        verbosity = min(verbosity, -1)
    if verbosity >= 1:
        return logging.DEBUG
    if verbosity == 0:
        return logging.INFO
    return logging.WARNING if verbosity == -1 else logging.ERROR


@contextmanager
def configure_logging(verbosity: int = 0):
    """For the duration of one command: clora3d's messages at the level of ``verbosity`` (-v minus
    -q), other libraries' warnings, all to stderr through one handler on the root logger. Restores
    the previous state afterwards (commands may run in-process, e.g. from tests)."""
    root, ours = logging.getLogger(), logging.getLogger("clora3d")
    handler = _StderrHandler()
    handler.setFormatter(_Formatter("%(message)s"))
    old_level = ours.level
    root.addHandler(handler)
    ours.setLevel(_level(verbosity))
    try:
        yield
    finally:
        root.removeHandler(handler)
        ours.setLevel(old_level)


def _add_verbosity(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a sub-command's parser must not overwrite what the main parser already counted
    p.add_argument("-v", "--verbose", action="count", default=argparse.SUPPRESS, help="more messages (debug)")
    p.add_argument(
        "-q",
        "--quiet",
        action="count",
        default=argparse.SUPPRESS,
        help="fewer messages (-q warnings only, -qq errors only)",
    )


def verbosity(args: argparse.Namespace) -> int:
    return getattr(args, "verbose", 0) - getattr(args, "quiet", 0)


# ------------------------------------------------------------------------------------------------
# parsers and dispatch
# ------------------------------------------------------------------------------------------------
def _command_parser(cmd: Command, prog: str | None = None) -> argparse.ArgumentParser:
    """The full parser of one command (only the command that runs has its parser built, so a
    command's options may need imports, e.g. the data formats, without slowing the others down)."""
    p = argparse.ArgumentParser(
        prog=prog, description=cmd.description, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    _add_verbosity(p)
    cmd.add_arguments(p)
    return p


def build_parser() -> argparse.ArgumentParser:
    """``clora3d [-v|-q] [--version] [COMMAND ...]``: the commands with their one-line help; the rest
    of the command line is parsed by the chosen command's own parser (:func:`_command_parser`)."""
    import clora3d

    p = argparse.ArgumentParser(
        prog="clora3d",
        description="clora3d: fine-tune pre-trained point cloud "
        "transformers with CLoRA and the other PEFT methods, and the tools around it.",
        epilog="`clora3d COMMAND --help` for a command's options. Exit codes: 0 ok, "
        "1 doctor: ops unusable (or an internal error), 2 user error (one "
        "'error:' line) or bad usage, 130 interrupted.",
    )
    p.add_argument("--version", action="version", version=f"clora3d {clora3d.__version__}")
    _add_verbosity(p)
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    for cmd in commands().values():
        sub.add_parser(cmd.name, help=cmd.help, add_help=False)  # options: the command's own parser
    return p


def _execute(cmd: Command, args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """The one error-handling path of every command (see the module docstring for the exit codes)."""
    from clora3d.errors import run_tool

    with configure_logging(verbosity(args)):
        try:
            return run_tool(lambda: cmd.run(args, parser))
        except KeyboardInterrupt:
            print("interrupted" + (f"; {cmd.on_interrupt}" if cmd.on_interrupt else ""), file=sys.stderr)
            return 130


def _summary() -> int:
    """``python -m clora3d`` without a command: the version and which kernels are active."""
    import clora3d
    from clora3d.ops._backend import kernels_summary

    print(f"clora3d {clora3d.__version__}")
    print(kernels_summary())
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``clora3d`` console script and of ``python -m clora3d``."""
    top = build_parser()
    args, rest = top.parse_known_args(argv)
    if args.command is None:
        if rest:
            top.error(f"unrecognized arguments: {' '.join(rest)}")
        return _summary()
    cmd = commands()[args.command]
    parser = _command_parser(cmd, prog=f"clora3d {cmd.name}")
    # -v/-q given before the command count too
    seen = {k: getattr(args, k) for k in ("verbose", "quiet") if hasattr(args, k)}
    return _execute(cmd, parser.parse_args(rest, namespace=argparse.Namespace(**seen)), parser)


def parse_args(name: str, argv: Sequence[str] | None = None, prog: str | None = None) -> argparse.Namespace:
    """The options of command ``name`` parsed from ``argv`` (default ``sys.argv[1:]``)."""
    return _command_parser(commands()[name], prog=prog).parse_args(argv)


def tool_main(name: str, argv: Sequence[str] | None = None, prog: str | None = None) -> int:
    """Run one command with its own options only (what ``tools/<name>.py`` does): the same parser,
    error handling and logging as ``clora3d <name>``."""
    cmd = commands()[name]
    parser = _command_parser(cmd, prog=prog)
    return _execute(cmd, parser.parse_args(argv), parser)
