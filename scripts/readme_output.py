"""The README's real output: run the Quick start's command and put its output in README.md.

``python scripts/readme_output.py --write`` rewrites the block between the markers;
without ``--write`` it exits 1 when the README's block is not the current output
(tests/test_readme.py runs the same comparison).
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BLOCK = re.compile(r"(<!-- output: (?P<cmd>memplan [^>]*) -->\n```text\n)(?P<out>.*?)(```\n)", re.S)


def command_output(command: str) -> str:
    """What ``command`` (``memplan ...``) prints, run in-process and offline."""
    from memplan.cli.main import main

    os.environ["MEMPLAN_OFFLINE"] = "1"
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        status = main(shlex.split(command)[1:])
    if status != 0:
        raise SystemExit(f"{command!r} exited {status}")
    return out.getvalue()


def current_readme(text: str) -> str:
    """``text`` with every output block replaced by its command's current output."""
    return BLOCK.sub(lambda m: m.group(1) + command_output(m.group("cmd")) + m.group(4), text)


def main() -> int:
    text = README.read_text(encoding="utf-8")
    fresh = current_readme(text)
    if "--write" in sys.argv:
        README.write_text(fresh, encoding="utf-8")
        return 0
    if fresh != text:
        print("README.md output block is stale: run `make readme`", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
