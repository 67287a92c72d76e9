"""Window values for the event-time windows, as pure functions (no Faust, no Kafka): the
specs, which windows a timestamp falls in and when they close, the exact aggregates and
their JSON and revenue forms, and the table keys. :mod:`app.domain.rules.windows`
builds the per-partition state on them and re-exports them; see it for the semantics.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from decimal import (
    MAX_EMAX,
    MAX_PREC,
    MIN_EMIN,
    ROUND_HALF_EVEN,
    Context,
    Decimal,
    DivisionByZero,
    Inexact,
    InvalidOperation,
    Overflow,
)
from typing import Final, Literal, NamedTuple

WindowKind = Literal["tumbling", "hopping"]
KINDS: Final[tuple[WindowKind, ...]] = ("tumbling", "hopping")

#: (sku, kind, window_start): the key of one window of one SKU.
WindowKey = tuple[str, WindowKind, int]

# Exact arithmetic: with MAX_PREC, additions and multiplications never round
# (the precision is only an upper bound, results use the digits they need).
# Inexact is trapped so that a rounding can never go unnoticed.
_EXACT: Final = Context(
    prec=MAX_PREC,
    Emax=MAX_EMAX,
    Emin=MIN_EMIN,
    traps=[InvalidOperation, DivisionByZero, Overflow, Inexact],
)
# Same range, but rounding allowed: used only to quantize to cents.
_ROUNDING: Final = Context(
    prec=MAX_PREC,
    Emax=MAX_EMAX,
    Emin=MIN_EMIN,
    rounding=ROUND_HALF_EVEN,
    traps=[InvalidOperation, DivisionByZero, Overflow],
)
exact_add: Final = _EXACT.add
"""Decimal addition that never rounds (Inexact is trapped)."""
exact_mul: Final = _EXACT.multiply
"""Decimal multiplication that never rounds (Inexact is trapped)."""
_CENT: Final = Decimal("0.01")
_ZERO: Final = Decimal(0)


# --------------------------------------------------------------------------- specs


class WindowSpec(NamedTuple):
    """One window definition. Build it with :func:`tumbling` or :func:`hopping`."""

    kind: WindowKind
    size_s: int
    step_s: int  # == size_s for tumbling windows

    @property
    def windows_per_ts(self) -> int:
        """How many windows cover any ts: 1 for tumbling, size/step for hopping."""
        return self.size_s // self.step_s


def _check_positive_int(name: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"{name} must be an integer number of seconds, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be > 0, got {value}")
    return value


def tumbling(size_s: int) -> WindowSpec:
    """Tumbling windows of ``size_s`` seconds: ``start = floor(ts / size) * size``."""
    size = _check_positive_int("size_s", size_s)
    return WindowSpec("tumbling", size, size)


def hopping(size_s: int, step_s: int) -> WindowSpec:
    """Hopping windows of ``size_s`` seconds starting every ``step_s`` seconds.

    ``size_s`` must be a multiple of ``step_s``: then every ts is covered by
    exactly ``size_s / step_s`` windows (the starts ``k * step`` in
    ``(ts - size, ts]``), so every order counts in the same number of windows
    and window ends fall on step boundaries too. With a size that is not a
    multiple of the step, the number of windows covering a ts would depend on
    where the ts falls within the step (e.g. size 90, step 60 gives 1 or 2).
    """
    size = _check_positive_int("size_s", size_s)
    step = _check_positive_int("step_s", step_s)
    if step > size:
        raise ValueError(f"step_s ({step}) must be <= size_s ({size})")
    if size % step:
        raise ValueError(f"size_s ({size}) must be a multiple of step_s ({step})")
    return WindowSpec("hopping", size, step)


def validate_spec(spec: WindowSpec) -> WindowSpec:
    """Re-validate a spec that may have been built by hand (``WindowSpec(...)``)."""
    if spec.kind == "tumbling":
        built = tumbling(spec.size_s)
        if spec.step_s != built.step_s:
            raise ValueError(f"tumbling windows need step_s == size_s, got {spec!r}")
        return built
    if spec.kind == "hopping":
        return hopping(spec.size_s, spec.step_s)
    raise ValueError(f"unknown window kind {spec.kind!r}")


# ---------------------------------------------------------------------- assignment


def window_starts(spec: WindowSpec, ts: float) -> list[int]:
    """Epoch-aligned starts of every window of ``spec`` covering ``ts``, ascending.

    Integer math only: for an integer boundary ``b``, ``b <= ts`` iff
    ``b <= floor(ts)`` and ``ts < b`` iff ``floor(ts) < b``, so working on
    ``floor(ts)`` is exact for any finite float (no ``ts / size`` rounding).
    """
    t = math.floor(ts)
    step = spec.step_s
    last = t - t % step  # floor(t / step) * step, also for negative t
    return list(range(last - spec.size_s + step, last + step, step))


def closes_at(spec: WindowSpec, start: int, grace_s: int) -> int:
    """Stream time at which the window ``[start, start + size)`` closes."""
    return start + spec.size_s + grace_s


def is_closed(spec: WindowSpec, start: int, stream_time: float | None, grace_s: int) -> bool:
    """Whether the window starting at ``start`` is closed at ``stream_time``."""
    return stream_time is not None and stream_time >= start + spec.size_s + grace_s


def idle_stream_time(
    stream_time_at_last_event: float | None, idle_for_s: float, idle_close_s: float
) -> float | None:
    """Stream time of a partition idle for ``idle_for_s`` wall seconds (idle close).

    ``stream_time_at_last_event`` is the partition's stream time right after its last
    event. Once the partition has been idle for at least ``idle_close_s`` (> 0), its
    stream time is that plus the wall time elapsed since; before that, or with idle
    close off (``idle_close_s <= 0``) or no stream time yet, None (leave it alone).
    Measured from the last event, not added up per call, so calling it often or
    seldom gives the same stream time for the same idle period.
    """
    if idle_close_s <= 0 or stream_time_at_last_event is None or idle_for_s < idle_close_s:
        return None
    return stream_time_at_last_event + idle_for_s


def assign(
    spec: WindowSpec, ts: float, stream_time_before: float | None, grace_s: int
) -> tuple[list[int], list[int]]:
    """Split the windows of an order into (open starts it counts in, late starts).

    ``stream_time_before`` is the partition's stream time *before* this order
    (None if no order was seen yet). A window is late iff it was already closed
    then; the order's own ts cannot close any of its windows.
    """
    open_starts: list[int] = []
    late_starts: list[int] = []
    for start in window_starts(spec, ts):
        if is_closed(spec, start, stream_time_before, grace_s):
            late_starts.append(start)
        else:
            open_starts.append(start)
    return open_starts, late_starts


# ---------------------------------------------------------------------- aggregates


class WindowAgg(NamedTuple):
    """Aggregate of one SKU in one window. ``revenue`` is exact (never rounded)."""

    orders: int
    units: int
    revenue: Decimal


EMPTY: Final = WindowAgg(0, 0, _ZERO)


def add(agg: WindowAgg, quantity: int, unit_price: Decimal) -> WindowAgg:
    """``agg`` plus one order of ``quantity`` units at ``unit_price`` (exact)."""
    return WindowAgg(
        agg.orders + 1,
        agg.units + quantity,
        _EXACT.add(agg.revenue, _EXACT.multiply(unit_price, quantity)),
    )


def agg_to_json(agg: WindowAgg) -> dict[str, int | str]:
    """JSON-ready dict; revenue as a string so it stays exact through the table."""
    return {"orders": agg.orders, "units": agg.units, "revenue": str(agg.revenue)}


def _json_count(d: Mapping[str, object], name: str) -> int:
    value = d.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"window aggregate: {name!r} must be an integer >= 0, got {value!r}")
    return value


def agg_from_json(d: Mapping[str, object]) -> WindowAgg:
    """Inverse of :func:`agg_to_json`; raises ValueError on anything malformed."""
    if not isinstance(d, Mapping):
        raise ValueError(f"window aggregate must be an object, got {type(d).__name__}")
    raw = d.get("revenue")
    if not isinstance(raw, str):
        raise ValueError(f"window aggregate: 'revenue' must be a string, got {raw!r}")
    try:
        revenue = Decimal(raw)
    except InvalidOperation:
        raise ValueError(f"window aggregate: bad revenue {raw!r}") from None
    if not revenue.is_finite():
        raise ValueError(f"window aggregate: bad revenue {raw!r}")
    return WindowAgg(_json_count(d, "orders"), _json_count(d, "units"), revenue)


def _quantize_cents(rev: Decimal) -> Decimal:
    return rev.quantize(_CENT, rounding=ROUND_HALF_EVEN, context=_ROUNDING)


def revenue_cents(rev: Decimal) -> str:
    """Revenue rounded half-even to cents, as plain text: "10.00", "0.12"."""
    return format(_quantize_cents(rev), "f")


#: Alias of :func:`revenue_cents`, for the call site that emits a JSON string.
revenue_str = revenue_cents


def revenue_out(rev: Decimal) -> float:
    """Revenue rounded half-even to cents, as a float for a JSON number.

    The float is the nearest double to the rounded value, so a shortest-repr
    serializer (orjson, ``json``, ``repr``) writes exactly the rounded value
    (``0.12``; ``10.0`` for 10.00) as long as it has at most 15 significant
    digits, i.e. revenue below 10**13. Above that, use :func:`revenue_str`.
    """
    return float(_quantize_cents(rev))


# -------------------------------------------------------------------- table keys


def window_key_str(key: WindowKey) -> str:
    """Table key text ``kind|start|sku``, with the start zero-padded to 12 digits.

    The SKU comes last so it may contain anything (also '|'); the padding makes
    keys of one kind sort by start for the non-negative starts of real data.
    """
    sku, kind, start = key
    return f"{kind}|{start:012d}|{sku}"


def parse_window_key(s: str) -> WindowKey:
    """Inverse of :func:`window_key_str`; raises ValueError if not canonical."""
    parts = s.split("|", 2)
    if len(parts) != 3:
        raise ValueError(f"bad window key {s!r}")
    kind, start_text, sku = parts
    if kind not in KINDS:
        raise ValueError(f"bad window key {s!r}: unknown kind {kind!r}")
    try:
        start = int(start_text)
    except ValueError:
        raise ValueError(f"bad window key {s!r}: bad start {start_text!r}") from None
    if f"{start:012d}" != start_text:
        raise ValueError(f"bad window key {s!r}: start {start_text!r} is not canonical")
    return (sku, kind, start)
