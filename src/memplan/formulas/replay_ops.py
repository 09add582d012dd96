"""The replay machinery of :mod:`memplan.formulas.forward_memory`: the live set, a forward's
shape, and the ops every block shares (norms, the KV row widths, heads per rank)."""

from __future__ import annotations

from dataclasses import dataclass, field

from memplan.formulas.attention import AttentionKernel
from memplan.specs.model import ModelSpec, NormKind

__all__ = [
    "FP32_BYTES",
    "INT64_BYTES",
    "ForwardShape",
    "Replay",
    "heads_per_rank",
    "kv_row_bytes",
    "norm",
    "rms_norm",
]

INT64_BYTES = 8
"""int64 (token ids, positions, indices)."""
FP32_BYTES = 4
"""float32 (norm statistics, softmax, rotary tables, routing weights)."""


@dataclass(slots=True)
class Replay:
    """The allocator's live set, replayed: ``new`` and ``free`` in program order.

    ``peak`` is the highest level reached; :meth:`at_peak` rebuilds what was live then from the
    event log (name -> (bytes, category)), so that the replay itself stays linear in the
    number of ops."""

    round_to: int = 512
    level: int = 0
    peak: int = 0
    live: dict[str, tuple[int, str]] = field(default_factory=dict)
    log: list[tuple[str, str, int, str]] = field(default_factory=list)
    """(op, name, bytes, category) with op ``new``, ``free`` or ``rename`` (bytes: 0; category:
    the new name)."""
    peak_index: int = 0
    """Events in the log when the peak was reached."""
    keep_log: bool = True
    """False: record the level and the peak only (searches that need no breakdown)."""

    def new(self, name: str, n_bytes: int, category: str = "temporaries", count: int = 1) -> None:
        """Allocate ``name``: ``count`` tensors of ``n_bytes`` each, every one rounded up to
        the allocator's block (0 allocates nothing)."""
        if name in self.live:
            raise ValueError(f"{name} is already live")
        size = count * -(-n_bytes // self.round_to) * self.round_to if n_bytes > 0 else 0
        self.live[name] = (size, category)
        if self.keep_log:
            self.log.append(("new", name, size, category))
        self.level += size
        if self.level > self.peak:
            self.peak = self.level
            self.peak_index = len(self.log)

    def free(self, *names: str) -> None:
        for name in names:
            self.level -= self.live.pop(name)[0]
            if self.keep_log:
                self.log.append(("free", name, 0, ""))

    def rename(self, old: str, new: str) -> None:
        """The same storage under another name (a variable handed on)."""
        self.live[new] = self.live.pop(old)
        if self.keep_log:
            self.log.append(("rename", old, 0, new))

    def at_peak(self) -> dict[str, tuple[int, str]]:
        """What was live at the peak: name -> (bytes, category)."""
        live: dict[str, tuple[int, str]] = {}
        for op, name, size, extra in self.log[: self.peak_index]:
            if op == "new":
                live[name] = (size, extra)
            elif op == "free":
                del live[name]
            else:
                live[extra] = live.pop(name)
        return live

    def by_category(self) -> dict[str, int]:
        """Bytes live at the peak per category."""
        totals: dict[str, int] = {}
        for size, category in self.at_peak().values():
            totals[category] = totals.get(category, 0) + size
        return totals

    def reset_peak(self) -> None:
        """Start measuring the peak from the current level (after pre-filling the cache)."""
        self.peak, self.peak_index = self.level, len(self.log)


@dataclass(frozen=True, slots=True, kw_only=True)
class ForwardShape:
    """One forward of ``generate``: the prefill (``past == 0``) or a decode step."""

    batch: int
    q_len: int
    """New tokens in this forward (the prompt, or 1)."""
    past: int
    """Tokens already in the cache before this forward."""
    act: int
    """Bytes of an activation element (the compute dtype)."""
    kv_bytes: int
    """Bytes of a cached element."""
    kernels: tuple[AttentionKernel, AttentionKernel]
    """The attention kernel of full-attention and of sliding-window layers in this forward
    (:func:`memplan.formulas.attention.generate_attention_kernel`: backend, how grouped KV
    heads reach it, whether transformers built a mask)."""
    cache: str = "dynamic"
    max_cache_len: int = 0
    """StaticCache length (``cache == "static"``)."""
    logits_all: bool = False
    """The lm_head over every position (``--logits all`` in the prefill), else the last."""
    tp_degree: int = 1
    kv_heads: int | None = None
    """KV heads per rank (None: the model's)."""

    @property
    def tokens(self) -> int:
        return self.batch * self.q_len


def heads_per_rank(spec: ModelSpec, shape: ForwardShape) -> tuple[int, int]:
    """(query heads, KV heads) per rank."""
    kv = shape.kv_heads if shape.kv_heads is not None else spec.n_kv_heads
    return spec.n_heads // shape.tp_degree, kv


def kv_row_bytes(spec: ModelSpec, shape: ForwardShape) -> tuple[int, int]:
    """Bytes one token adds to one layer's K and V tensors, over the batch (MLA: the latent
    and the roped key, single-headed)."""
    b, width = shape.batch, shape.kv_bytes
    if spec.mla is not None:
        return b * spec.mla.kv_lora_rank * width, b * spec.mla.qk_rope_head_dim * width
    _, kv_heads = heads_per_rank(spec, shape)
    return (b * kv_heads * spec.head_dim * width,) * 2


# Norms -----------------------------------------------------------------------------------------
def rms_norm(
    spec: ModelSpec, shape: ForwardShape, r: Replay, source: str, out: str, width: int
) -> None:
    """``LlamaRMSNorm``: ``x.to(fp32)`` (a copy in half precision), ``pow``, ``mean``,
    ``+ eps``, ``rsqrt``, ``x * rsqrt``, ``.to(dtype)``, ``weight * x``."""
    t, act = shape.tokens, shape.act
    full, row = t * width * FP32_BYTES, t * FP32_BYTES
    half = act != FP32_BYTES
    x32 = f"{out}/x_fp32" if half else source
    if half:
        r.new(x32, full)
    r.new(f"{out}/pow", full)
    r.new(f"{out}/variance", row)
    r.free(f"{out}/pow")
    r.new(f"{out}/plus_eps", row)
    r.new(f"{out}/rsqrt", row)
    r.free(f"{out}/plus_eps")
    r.new(f"{out}/normed", full)
    r.free(f"{out}/rsqrt")
    if half:
        r.free(x32)
        r.new(f"{out}/cast", t * width * act)
        r.new(out, t * width * act)
        r.free(f"{out}/cast")
    else:
        r.new(out, full)
    r.free(f"{out}/normed", f"{out}/variance")


def norm(spec: ModelSpec, shape: ForwardShape, r: Replay, source: str, out: str) -> None:
    if spec.norm_kind is NormKind.RMSNORM:
        rms_norm(spec, shape, r, source, out, spec.hidden_size)
    else:
        _layer_norm(spec, shape, r, out)


def _layer_norm(spec: ModelSpec, shape: ForwardShape, r: Replay, out: str) -> None:
    """``native_layer_norm``: the output plus fp32 mean and rstd (B, S, 1), freed at once."""
    t, act = shape.tokens, shape.act
    r.new(out, t * spec.hidden_size * act)
    r.new(f"{out}/mean", t * FP32_BYTES)
    r.new(f"{out}/rstd", t * FP32_BYTES)
    r.free(f"{out}/mean", f"{out}/rstd")
