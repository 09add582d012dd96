"""Loading the command modules: a broken one fails loudly; a missing extra prints its hint."""

from __future__ import annotations

import gc
import importlib
from typing import Any

import pytest

from memplan.cli import main as cli_main
from memplan.errors import MissingExtraError


def test_a_command_module_that_cannot_be_imported_fails_loudly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(cli_main, "COMMANDS", (*cli_main.COMMANDS, "no_such_command"))
    with pytest.raises(ModuleNotFoundError, match="no_such_command"):
        cli_main.build_parser()


def test_a_command_whose_extra_is_missing_prints_the_install_hint(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real_import = importlib.import_module
    hint = "memplan serve needs the web extra: pip install 'memplan[web]'"

    def import_module(name: str, *args: Any) -> Any:
        if name == "memplan.cli.web_thing":
            raise MissingExtraError(hint)
        return real_import(name, *args)

    monkeypatch.setattr(cli_main, "COMMANDS", (*cli_main.COMMANDS, "web_thing"))
    monkeypatch.setattr(cli_main.importlib, "import_module", import_module)
    assert cli_main.main(["web-thing", "--port", "8000"]) == 2
    assert capsys.readouterr().err == f"memplan: error: {hint}\n"
    assert "web-thing" in cli_main.build_parser().format_help()


def test_every_listed_command_is_registered() -> None:
    help_text = cli_main.build_parser().format_help()
    for name in cli_main.COMMANDS:
        assert name.replace("_", "-") in help_text


def test_the_console_script_exits_with_mains_status_and_its_objects_frozen(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``memplan`` (``run``) returns ``main``'s status and freezes the collector's objects first,
    so that the interpreter's last full collection does not scan torch's and transformers'
    (bench/bench_trace.py: about a second of CPU after a trace)."""
    monkeypatch.setattr(cli_main, "main", lambda: 3)
    try:
        with pytest.raises(SystemExit) as exited:
            cli_main.run()
        assert exited.value.code == 3
        assert gc.get_freeze_count() > 0
    finally:
        gc.unfreeze()
