"""Entry point of the `vqt` console script.

Every sub-command lives in its own module of this package and exposes `register(subparsers)`, which adds its
parser and sets `func(args) -> int`. Errors derived from `VQTError`, and every `OSError` (a path the user gave
that is missing, a file, a folder, unwritable, a full disk), print one line `vqt: error: ...` naming the file and
exit 2; `--debug` shows the traceback instead. A command whose work failed, even in part, never returns 0 (each
command's --help says which status it uses).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import sys

from vqt.distributed import launched_by_torchrun
from vqt.errors import VQTError, user_message

# Sub-command modules, in the order `vqt --help` lists them.
COMMAND_MODULES = ("demo", "info", "bench", "data", "train", "sweep", "eval", "predict", "export", "serve", "push",
                   "extract", "viz", "report", "compare")


# Commands whose ranks share the work under torchrun (docs/distributed.md); the others run on rank 0 alone.
SHARED_COMMANDS = frozenset({"extract", "train", "sweep", "eval"})


def version_line() -> str:
    import vqt

    return f"vqt {vqt.__version__} ({vqt.DISTRIBUTION}, Python {sys.version.split()[0]})"


def asks_version(argv: list[str]) -> bool:
    """`vqt --version` (before any command): answered without importing the commands (and so torch)."""
    for arg in argv:
        if arg == "--version":
            return True
        if arg in COMMAND_MODULES:
            return False
    return False


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vqt",
        description="Visual Query Tuning for timm Vision Transformers.",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=version_line(),
                        help="print the installed version (distribution visual-query-tuning) and exit")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument(
        "--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="logging level"
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(f"vqt.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    if asks_version(sys.argv[1:] if argv is None else argv):
        print(version_line())
        return 0
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
        parser.print_help()
        return 1
    if not launched_by_torchrun():
        logging.basicConfig(level=args.log_level, format="%(levelname)s %(name)s: %(message)s")
        return run_command(args)
    return run_distributed(args, sys.argv[1:] if argv is None else list(argv))


def run_command(args: argparse.Namespace, prefix: str = "") -> int:
    """Run the chosen command; a user error is one line `vqt: error: ...` (rank-prefixed under torchrun)."""
    try:
        return int(args.func(args) or 0)
    except (VQTError, OSError) as error:
        if args.debug:
            raise
        from vqt.distributed.context import already_reported

        if not already_reported(error):  # a rank that told the others of its failure printed its line first
            print(f"vqt: error: {prefix}{user_message(error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"vqt: {prefix}interrupted", file=sys.stderr)
        return 130


def run_distributed(args: argparse.Namespace, argv: list[str]) -> int:
    """Under torchrun: join the process group once, refuse ranks launched with different arguments, let only
    rank 0 print (tables to stdout, progress bars), name the rank in logs and errors (docs/distributed.md)."""
    from vqt.distributed import context

    try:
        ctx = context.init_from_env(getattr(args, "device", None))
        context.configure_logging(args.log_level)
        context.check_same_arguments(argv)
    except VQTError as error:
        if args.debug:
            raise
        print(f"vqt: error: {context.log_prefix()}{error}", file=sys.stderr)
        return 2
    if args.command not in SHARED_COMMANDS and ctx.distributed:  # nothing to share: rank 0 runs it alone
        context.shutdown()
        if not ctx.is_main:
            logging.getLogger("vqt.cli").info("`vqt %s` does not use several processes: rank 0 runs it", args.command)
            return 0
        return run_command(args)
    if not ctx.is_main:  # one progress bar, one table: rank 0's
        if hasattr(args, "no_progress"):
            args.no_progress = True
        if isinstance(getattr(args, "progress", None), bool):
            args.progress = False
    with contextlib.ExitStack() as stack:
        if not ctx.is_main:
            stack.enter_context(contextlib.redirect_stdout(stack.enter_context(open(os.devnull, "w"))))
        status = run_command(args, context.log_prefix())
    if status == 0:
        context.shutdown()  # after a failure other ranks may still be inside a collective: just exit
    return status


if __name__ == "__main__":
    sys.exit(main())
