"""`mxmix` entry point: registers each command module and turns MxmixError into one line + exit code."""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from mxmix import __version__
from mxmix.errors import MxmixError

# Each module defines `register(subparsers)`; it must import nothing heavy (torch, transformers)
# at module level so that `mxmix --help` and `mxmix rules ...` start fast.
COMMAND_MODULES = (
    "mxmix.cli.rules_cmd",
    "mxmix.cli.plan_cmd",
    "mxmix.cli.example_cmd",
    "mxmix.cli.quantize_cmd",
    "mxmix.cli.inspect_cmd",
    "mxmix.cli.audit_cmd",
    "mxmix.cli.run_cmd",
    "mxmix.cli.eval_cmd",
    "mxmix.cli.sensitivity_cmd",
    "mxmix.cli.serve_cmd",
    "mxmix.cli.demo_cmd",
)


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors are one line (no usage dump) and exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"mxmix: error: {message} (see '{self.prog} --help')\n")
        raise SystemExit(2)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="mxmix", description="Mixed-precision MXFP8/BF16 LLM checkpoints.")
    parser.add_argument("--version", action="version", version=f"mxmix {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:  # a command still being built must not break the others
            if exc.name == name:
                continue
            raise
        module.register(sub)
    return parser


_hard_exit = False


def request_hard_exit() -> None:
    """Ask the process entry point to end with os._exit once the command returns.

    For commands that ran torch from several threads (the server): libstdc++ can abort ("terminate
    called without an active exception") while tearing those threads' state down at interpreter exit,
    turning a clean stop into SIGABRT. The command has already closed and flushed everything by then.
    """
    global _hard_exit
    _hard_exit = True


def entry() -> None:
    """Console-script / ``python -m`` entry: run, then exit (hard only where a command asked for it)."""
    code = main()
    if _hard_exit:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    raise SystemExit(code)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        code = args.func(args)
    except MxmixError as exc:
        sys.stderr.write(f"mxmix: error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("mxmix: interrupted\n")
        return 130
    except BrokenPipeError:
        return 0
    return int(code or 0)


if __name__ == "__main__":
    entry()
