"""The report: the single object that the CLI, JSON, plots and the web page all render.

A :class:`Report` holds a breakdown tree of :class:`Item` nodes. A leaf carries a value, the
formula that produced it and its source; an inner node's total is, by construction, the sum of
its children. The analytic and the trace engine use the same keys, so two reports can be diffed
line by line (``Item.flatten``).

JSON contract (other tools read it): ``Report.to_dict()`` gives ``kind``, ``model``, ``setup``,
the report's scalars at top level (``total_params``, ``peak_bytes``, ``max_batch_size``,
``kv_cache_tokens``, ...), ``breakdown`` (the tree), ``phases`` (a training report adds
``first_step_phases``) and ``notes``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from memplan.units import render_marks

__all__ = [
    "INFERENCE_PHASES",
    "TRAINING_CATEGORIES",
    "TRAINING_PHASES",
    "Item",
    "Phase",
    "Report",
]

TRAINING_PHASES = (
    "after_load",
    "end_of_forward",
    "peak_backward",
    "after_backward",
    "optimizer_step",
    "after_zero_grad",
)
"""The phases of a training step, in order: the same in the analytic and the trace engine."""

INFERENCE_PHASES = ("after_load", "prefill_peak", "after_prefill", "decode_peak", "after_decode")
"""The phases of a generate call, in order: the same in the analytic and the trace engine."""

TRAINING_CATEGORIES = (
    "parameters",
    "gradients",
    "optimizer_states",
    "activations",
    "autocast_cache",
    "temporaries",
    "inputs",
    "buffers",
)
"""The children of a training report's ``peak`` breakdown (docs/ARCHITECTURE.md)."""


@dataclass(slots=True)
class Item:
    """A node of a breakdown tree.

    A leaf has ``value``; an inner node has ``children`` and its total is their sum.
    ``unit`` is one of ``"params"``, ``"bytes"``, ``"flops"``, ``"s"``.
    """

    key: str
    value: float = 0
    unit: str = "bytes"
    formula: str = ""
    source: str = ""
    note: str = ""
    children: list[Item] = field(default_factory=list)

    @property
    def total(self) -> float:
        if not self.children:
            return self.value
        return sum(child.total for child in self.children)

    def add(self, child: Item) -> Item:
        """Append ``child`` and return it (for chaining sub-trees)."""
        self.children.append(child)
        return child

    def leaf(
        self, key: str, value: float, formula: str = "", source: str = "", note: str = ""
    ) -> Item:
        """Append a leaf with this node's unit and return it."""
        return self.add(Item(key, value, self.unit, formula, source, note))

    def child(self, key: str) -> Item:
        """The direct child named ``key`` (KeyError if absent)."""
        for item in self.children:
            if item.key == key:
                return item
        raise KeyError(key)

    def find(self, path: str) -> Item:
        """The node at ``"a/b/c"`` below this one."""
        node = self
        for part in path.split("/"):
            node = node.child(part)
        return node

    def get(self, path: str, default: float = 0) -> float:
        """The total at ``path``, or ``default`` when there is no such node."""
        try:
            return self.find(path).total
        except KeyError:
            return default

    def flatten(self, prefix: str = "") -> Iterator[tuple[str, Item]]:
        """Every node as ``("a/b/c", item)``, parents before children."""
        path = f"{prefix}/{self.key}" if prefix else self.key
        yield path, self
        for child in self.children:
            yield from child.flatten(path)

    def to_dict(self) -> dict[str, Any]:
        total = self.total
        out: dict[str, Any] = {
            "key": self.key,
            "total": int(total) if float(total).is_integer() else total,
            "unit": self.unit,
        }
        if self.formula:
            out["formula"] = self.formula
        if self.source:
            out["source"] = self.source
        if self.note:
            out["note"] = self.note
        if self.children:
            out["children"] = [child.to_dict() for child in self.children]
        return out


@dataclass(slots=True)
class Phase:
    """Live memory at one point of a step (``after_load``, ``end_of_forward``, ...)."""

    name: str
    bytes: int
    note: str = ""
    breakdown: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "bytes": self.bytes}
        if self.note:
            out["note"] = self.note
        if self.breakdown:
            out["breakdown"] = dict(self.breakdown)
        return out


@dataclass(slots=True)
class Report:
    """What an estimator or the tracer returns; rendered by the CLI, JSON and the web page."""

    kind: str
    model: str
    breakdown: Item
    setup: dict[str, Any] = field(default_factory=dict)
    scalars: dict[str, Any] = field(default_factory=dict)
    phases: list[Phase] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    sections: dict[str, Item] = field(default_factory=dict)
    first_step_phases: list[Phase] = field(default_factory=list)
    """Training: the same phases in the first iteration (before the optimizer states exist)."""

    def to_dict(self, *, decimal: bool = False) -> dict[str, Any]:
        """The JSON form; sizes inside notes in GiB (GB with ``decimal``)."""
        setup = {key: value for key, value in self.setup.items() if value is not None}
        out: dict[str, Any] = {"kind": self.kind, "model": self.model, "setup": setup}
        out.update(self.scalars)
        out["breakdown"] = self.breakdown.to_dict()
        if self.sections:
            out["sections"] = {name: item.to_dict() for name, item in self.sections.items()}
        out["phases"] = [phase.to_dict() for phase in self.phases]
        if self.first_step_phases:
            out["first_step_phases"] = [phase.to_dict() for phase in self.first_step_phases]
        out["notes"] = [render_marks(note, decimal=decimal) for note in self.notes]
        return out
