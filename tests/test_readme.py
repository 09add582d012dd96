"""The README and every command's --help: the shown output is current, every example runs
offline.

Examples of ``trace`` (and ``compare``'s trace half) need torch and take minutes at full size,
so here they are parsed, their model resolved offline and their setup checked; the trace
engine itself is tested in tests/test_trace_*.py on size-reduced configs.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import re
import shlex
from pathlib import Path
from types import ModuleType

import pytest

from memplan.cli.main import COMMANDS, build_parser, main

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "readme_output", ROOT / "scripts/readme_output.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _help_examples() -> list[str]:
    """Every ``memplan ...`` line of the top-level and the commands' --help epilogs."""
    parser = build_parser()
    texts = [parser.epilog or ""]
    subparsers = next(a for a in parser._actions if a.dest == "command")
    texts += [sub.epilog or "" for sub in subparsers.choices.values()]  # type: ignore[attr-defined]
    examples = []
    for text in texts:
        joined = re.sub(r"\\\n\s*", "", text)
        examples += [
            line.split("  (")[0].strip()  # "memplan params ./my-model/   (a folder: ...)"
            for line in joined.splitlines()
            if line.startswith("  memplan ")
        ]
    return examples


def _readme_examples() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```sh\n(.*?)```", text, re.S)
    lines = [line.split("#")[0].strip() for block in blocks for line in block.splitlines()]
    return [line for line in lines if line.startswith("memplan ")]


def _examples() -> list[str]:
    seen: dict[str, None] = {}
    for example in (*_readme_examples(), *_help_examples()):
        seen.setdefault(example)
    return list(seen)


def test_readme_output_is_current() -> None:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "<!-- output: memplan train" in text
    assert _script().current_readme(text) == text, "README.md is stale: run `make readme`"


def test_every_command_has_examples() -> None:
    commands = {example.split()[1] for example in _help_examples()}
    assert {name.replace("_", "-") for name in COMMANDS} <= commands


@pytest.fixture
def _model_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``./config.json`` and ``./my-model/`` as the examples name them (a Llama config)."""
    from memplan.catalog import catalog_config, find_entry

    entry = find_entry("llama-3.2-1b")
    assert entry is not None
    text = json.dumps(catalog_config(entry))
    (tmp_path / "config.json").write_text(text)
    (tmp_path / "my-model").mkdir()
    (tmp_path / "my-model" / "config.json").write_text(text)
    monkeypatch.chdir(tmp_path)


@pytest.mark.parametrize("example", _examples())
@pytest.mark.usefixtures("_model_files")
def test_example_runs_offline(example: str) -> None:
    argv = shlex.split(example)[1:]
    if argv[0] == "trace":
        from memplan.cli.trace import resolve_model

        args = build_parser().parse_args(argv)
        assert resolve_model(args.model) is not None
        return
    if argv[0] == "serve":  # starts a server: parsed here, run in tests/test_web_browser.py
        args = build_parser().parse_args(argv)
        assert 0 < args.port < 65536
        return
    if argv[0] == "compare" and "--no-trace" not in argv:
        argv.append("--no-trace")
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(argv)
    assert status == 0, err.getvalue()
    if argv[0] in ("train", "infer", "serve-capacity", "time", "params"):
        if "--json" in argv and argv[0] == "params":  # params --json is the API's report
            assert json.loads(out.getvalue())["total_params"] > 0
        elif "--json" in argv:
            assert json.loads(out.getvalue())["verdict"].startswith("verdict: ")
        else:
            assert out.getvalue().splitlines()[-1].startswith("verdict: ")
