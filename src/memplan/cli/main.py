"""``memplan`` entry point: ``main(argv) -> exit status``; ``run()`` for the console script.

Each command lives in ``memplan.cli.<name>`` and exposes ``register(subparsers)``, which adds
its parser and sets ``func`` (``args -> int``) as the parser default. Command modules import
nothing heavy at module level: ``memplan params`` must answer without importing torch.

A command module that cannot be imported is a broken install and fails loudly, with one
exception: a module that needs an optional extra at import time raises ``MissingExtraError``
(whose message is the install command); the command is then still listed, and running it
prints that install hint (``memplan: error: ...``, exit 2).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from memplan.errors import MemplanError, MissingExtraError

__all__ = ["OneLineParser", "build_parser", "main", "run"]

COMMANDS = (
    "params",
    "models",
    "train",
    "infer",
    "serve_capacity",
    "time",
    "plan",
    "gpus",
    "trace",
    "compare",
    "sweep",
    "serve",
)

EPILOG = """\
examples:
  memplan params meta-llama/Llama-2-7b-hf
  memplan params ./my-model/config.json --json
  memplan models
  memplan train meta-llama/Llama-3.1-8B --batch 2 --seq 4096 --precision bf16-mixed --gpu H100
  memplan infer Qwen/Qwen2.5-7B-Instruct --batch 8 --prompt-len 2048 --gen-len 512 --gpu L40S
  memplan serve-capacity microsoft/Phi-3-mini-4k-instruct --gpu H100-SXM
  memplan time gpt2-xl --steps 400000 --batch 1024 --seq 1024 --gpu A100-80GB
  memplan plan meta-llama/Llama-3.1-70B --gpus 64 --gpu H100 --seq 4096 --global-batch 512
  memplan gpus
  memplan trace llama-3.2-1b --train --batch 1 --seq 2048
  memplan compare llama-3.2-1b --batch 1 --seq 2048

Sizes are shown in GiB (2^30 bytes) and labelled so; pass --decimal for GB (10^9).
"""


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (``memplan: error: ...``, exit 2), not the
    usage dump: the same form as every other input error. Subcommand parsers inherit it."""

    def error_line(self, message: str) -> str:
        """The one line the CLI prints for an argparse error (the web API answers it too)."""
        command = self.prog.split(" ", 1)[1] if " " in self.prog else ""
        hint = f" (see `memplan {command} --help`)" if command else " (see `memplan --help`)"
        return f"memplan: error: {message}{hint}"

    def error(self, message: str) -> NoReturn:
        self.exit(2, self.error_line(message) + "\n")


def build_parser(parser_class: type[OneLineParser] = OneLineParser) -> argparse.ArgumentParser:
    """The ``memplan`` parser with every command's subparser. ``parser_class`` lets the web API
    parse the same flags with a parser that raises instead of exiting (``memplan.cli.schema``)."""
    parser = parser_class(
        prog="memplan",
        description="Will this model fit, where does the memory go, how long will it take.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    from memplan import __version__

    parser.add_argument("--version", action="version", version=f"memplan {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        try:
            module = importlib.import_module(f"memplan.cli.{name}")
        except MissingExtraError as exc:
            _register_missing_extra(subparsers, name, str(exc))
            continue
        module.register(subparsers)
    return parser


def _register_missing_extra(subparsers: Any, name: str, hint: str) -> None:
    """A command whose optional extra is not installed: listed, and running it says how to
    install the extra."""

    def missing(args: argparse.Namespace) -> int:
        raise MissingExtraError(hint)

    # whatever follows (options included) is accepted, so that the hint is what the user sees
    parser = subparsers.add_parser(
        name.replace("_", "-"),
        help=f"(not installed: {hint})",
        add_help=False,
        prefix_chars="\0",
    )
    parser.add_argument("args", nargs="*")
    parser.set_defaults(func=missing)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, or a one-line usage error
        return exc.code if isinstance(exc.code, int) else 2
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args))
    except MemplanError as exc:
        print(f"memplan: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("memplan: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def run() -> None:
    """The console script: ``main()``, then exit without the interpreter's last full
    collection scanning what the command imported."""
    status = main()
    exit_quickly()
    sys.exit(status)


def exit_quickly() -> None:
    """Spare the interpreter's exit a scan of every object the process holds.

    At exit Python runs a full cyclic collection while it tears the modules down; after a
    trace (torch, torch._dynamo and transformers imported: millions of objects) it takes
    about a second of CPU for nothing, since the process is about to end. ``gc.freeze()``
    moves every object to the collector's permanent generation, which that collection skips
    (https://docs.python.org/3/library/gc.html#gc.freeze); objects are still freed as their
    references drop, atexit handlers still run, and stdout and stderr are still flushed.
    """
    gc.freeze()
