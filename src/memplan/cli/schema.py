"""The commands' flags as data: one source, the argparse parsers, for the web API and its page.

``command_fields(parser)`` describes every flag of a command (name, kind, default, choices,
help, group), so a flag added to a command's parser appears on the web page and in the API
with no web change. ``FieldParser`` turns a JSON object of those fields into the very
``argparse.Namespace`` the CLI gets from the same flags: same types, same defaults, same
validation; an invalid value raises :class:`FieldError` with argparse's own message on one
line, the CLI's own (``memplan: error: argument --batch: ... (see `memplan train --help`)``),
instead of exiting.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping
from typing import Any, NoReturn

from memplan.cli.main import OneLineParser
from memplan.errors import SetupError

__all__ = ["OUTPUT_DESTS", "ArgumentsError", "FieldError", "FieldParser", "command_fields"]

OUTPUT_DESTS = frozenset({"help", "version", "json", "decimal", "plot", "all"})
"""Flags that choose how a report is printed, not what it says: the API always answers JSON."""


class FieldError(SetupError):
    """A field the command's parser rejects (its message is argparse's, on one line)."""


class ArgumentsError(FieldError):
    """argparse's own complaint, already worded as the CLI prints it (``memplan train: error:
    argument --batch: ...``)."""


class _RaisingParser(OneLineParser):
    """The CLI's parser, raising :class:`ArgumentsError` with the line the CLI would print."""

    def error(self, message: str) -> NoReturn:
        raise ArgumentsError(self.error_line(message))

    def exit(self, status: int = 0, message: str | None = None) -> NoReturn:
        raise ArgumentsError((message or self.error_line(f"exit {status}")).strip())


def _flag_name(action: argparse.Action) -> str:
    """The field's name: the first long flag without its dashes, or a positional's dest."""
    for option in action.option_strings:
        if option.startswith("--"):
            return option[2:]
    return action.dest


def _kind(action: argparse.Action) -> str:
    """``bool``, ``integer``, ``number``, ``choice`` or ``string`` (what the form shows)."""
    if isinstance(action, argparse._StoreTrueAction | argparse._StoreFalseAction):
        return "bool"
    if action.choices is not None:
        return "choice"
    kind = action.type
    returns = getattr(kind, "__annotations__", {}).get("return")
    if kind is int or returns in (int, "int"):
        return "integer"
    if kind is float or returns in (float, "float"):
        return "number"
    return "string"


def _plain(value: Any) -> Any:
    """A default as JSON: None for argparse's SUPPRESS, text for anything not JSON-native."""
    if value is argparse.SUPPRESS:
        return None
    if value is None or isinstance(value, bool | int | float | str):
        return value
    return str(value)


def _fields_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.dest not in OUTPUT_DESTS]


def command_fields(parser: argparse.ArgumentParser) -> list[dict[str, Any]]:
    """Every field of a command's parser, in the parser's order, as plain JSON data."""
    groups = {id(a): g.title for g in parser._action_groups for a in g._group_actions}
    exclusive = {
        id(a): [_flag_name(b) for b in g._group_actions if b is not a]
        for g in parser._mutually_exclusive_groups
        for a in g._group_actions
    }
    fields = []
    for action in _fields_actions(parser):
        field: dict[str, Any] = {
            "name": _flag_name(action),
            "dest": action.dest,
            "flag": action.option_strings[0] if action.option_strings else None,
            "kind": _kind(action),
            "default": _plain(action.default),
            "required": bool(action.required),
            "help": action.help if action.help is not argparse.SUPPRESS else None,
            "metavar": action.metavar if isinstance(action.metavar, str) else None,
            "group": groups.get(id(action)),
        }
        if action.choices is not None:
            field["choices"] = [_plain(c) for c in action.choices]
        if id(action) in exclusive:
            field["exclusive_with"] = exclusive[id(action)]
        fields.append(field)
    return fields


def _value_text(name: str, value: Any) -> str:
    if isinstance(value, bool):
        raise FieldError(f"field {name!r} takes a value, not {str(value).lower()}")
    if isinstance(value, int | float | str):
        return str(value)
    raise FieldError(f"field {name!r} must be a number or a string, got {type(value).__name__}")


class FieldParser:
    """The CLI's parsers, built once, reading JSON fields instead of a command line."""

    def __init__(self) -> None:
        from memplan.cli.main import build_parser

        top = build_parser(parser_class=_RaisingParser)
        sub = next(a for a in top._actions if isinstance(a, argparse._SubParsersAction))
        self.parsers: dict[str, argparse.ArgumentParser] = dict(sub.choices)
        self._top = top

    def fields(self, command: str) -> list[dict[str, Any]]:
        return command_fields(self.parsers[command])

    def argv(self, command: str, values: Mapping[str, Any]) -> list[str]:
        """The command line that gives the same Namespace as ``values`` (for the parser and
        for the page's "copy as CLI command")."""
        parser = self.parsers[command]
        lookup: dict[str, argparse.Action] = {}
        for action in _fields_actions(parser):
            lookup[_flag_name(action)] = action
            lookup.setdefault(action.dest, action)
        positionals: list[str] = []
        options: list[str] = []
        for name, value in values.items():
            if name not in lookup:
                known = ", ".join(_flag_name(a) for a in _fields_actions(parser))
                raise FieldError(f"{parser.prog} has no field {name!r}; its fields: {known}")
            action = lookup[name]
            if value is None:
                continue
            if not action.option_strings:
                text = _value_text(name, value)
                if text.startswith("-"):
                    raise FieldError(f"{name} must not start with '-', got {text!r}")
                positionals.append(text)
            elif action.nargs == 0:
                if not isinstance(value, bool):
                    raise FieldError(f"field {name!r} is true or false, got {value!r}")
                if value:
                    options.append(action.option_strings[0])
            else:
                items = value if isinstance(value, list) else [value]
                flag = action.option_strings[0]
                options.extend(f"{flag}={_value_text(name, item)}" for item in items)
        return [command, *positionals, *options]

    def parse(self, command: str, values: Mapping[str, Any]) -> argparse.Namespace:
        """The Namespace ``memplan COMMAND ...`` would get (FieldError for a bad value)."""
        if command not in self.parsers:
            raise FieldError(f"no command {command!r}; commands: {', '.join(self.parsers)}")
        return self.parse_argv(self.argv(command, values))

    def parse_argv(self, argv: list[str]) -> argparse.Namespace:
        """``argv`` (``[command, ...]``) parsed as the CLI would, raising instead of exiting."""
        return self._top.parse_args(argv)
