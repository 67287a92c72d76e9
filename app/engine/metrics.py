"""Metrics: a tiny in-process Prometheus registry (text format 0.0.4) and the worker's metrics.

This module owns the registry and the metrics the engine and the agents update, and
their names; app/serving/metrics.py adds the gauges only serving knows and renders
``GET /metrics``. Two kinds:

* updated on the hot path, once per batch: the input counter (agents/ingest.py calls
  :func:`count_input` once per fetch), the output counters, the dead-letter counter,
  the batch latency histogram and the committed offsets (app/engine/transaction.py calls
  :func:`committed` after each successful commit);
* read only when scraped: the ``/stats`` totals from the tables (:func:`app.serving.web.totals`)
  and the consumer lag of every input partition assigned to this worker.

Counters count in this process since it started (Prometheus handles restarts); the
table gauges survive restarts because the tables do. No dependency: the registry is
the few lines below.
"""

from __future__ import annotations

import bisect
import math
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, TypeVar

from app.engine import topics
from app.engine.instance import app

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]
Sample = tuple[str, Labels, float]
"""(name suffix, labels, value) of one line."""


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _number(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    if value == int(value) and abs(value) < 1e15:
        return str(int(value))
    return repr(value)


def sample_line(name: str, labels: Labels, value: float) -> str:
    if not labels:
        return f"{name} {_number(value)}"
    inner = ",".join(f'{k}="{_escape_label(v)}"' for k, v in labels)
    return f"{name}{{{inner}}} {_number(value)}"


class Metric:
    """One metric family: its name, help, type and the samples it renders."""

    kind = "untyped"

    def __init__(self, name: str, help: str) -> None:
        self.name = name
        self.help = help

    def samples(self) -> Iterable[Sample]:
        raise NotImplementedError

    def render(self) -> Iterator[str]:
        yield f"# HELP {self.name} {_escape_help(self.help)}"
        yield f"# TYPE {self.name} {self.kind}"
        for suffix, labels, value in self.samples():
            yield sample_line(self.name + suffix, labels, value)


class Counter(Metric):
    """A monotonic count per label value (``label`` None: a single unlabelled count)."""

    kind = "counter"

    def __init__(self, name: str, help: str, label: str | None = None) -> None:
        super().__init__(name, help)
        self.label = label
        self.values: dict[str, float] = {} if label else {"": 0.0}

    def inc(self, amount: float = 1.0, label_value: str = "") -> None:
        self.values[label_value] = self.values.get(label_value, 0.0) + amount

    def get(self, label_value: str = "") -> float:
        return self.values.get(label_value, 0.0)

    def samples(self) -> Iterable[Sample]:
        for value, count in sorted(self.values.items()):
            labels: Labels = ((self.label, value),) if self.label else ()
            yield "", labels, count


class Histogram(Metric):
    """Cumulative buckets, sum and count of observed values."""

    kind = "histogram"

    def __init__(self, name: str, help: str, buckets: Sequence[float]) -> None:
        super().__init__(name, help)
        self.bounds = sorted(buckets)
        self.counts = [0] * (len(self.bounds) + 1)  # the last one is +Inf
        self.sum = 0.0
        self.count = 0

    def observe(self, value: float) -> None:
        self.counts[bisect.bisect_left(self.bounds, value)] += 1
        self.sum += value
        self.count += 1

    def samples(self) -> Iterable[Sample]:
        running = 0
        for bound, n in zip([*self.bounds, math.inf], self.counts, strict=True):
            running += n
            yield "_bucket", (("le", _number(bound)),), running
        yield "_sum", (), self.sum
        yield "_count", (), self.count


class Gauge(Metric):
    """A value (per labels) computed when scraped; ``read`` returns (labels, value) pairs."""

    kind = "gauge"

    def __init__(self, name: str, help: str, read: Callable[[], Iterable[tuple[Labels, float]]]):
        super().__init__(name, help)
        self.read = read

    def samples(self) -> Iterable[Sample]:
        for labels, value in self.read():
            yield "", labels, value


M = TypeVar("M", bound=Metric)


class Registry:
    """The metric families of this process, rendered in registration order."""

    def __init__(self) -> None:
        self.metrics: list[Metric] = []

    def register(self, metric: M) -> M:
        self.metrics.append(metric)
        return metric

    def render(self) -> str:
        lines: list[str] = []
        for metric in self.metrics:
            try:
                lines.extend(list(metric.render()))  # all of a family, or none of it
            except Exception:  # a scrape never fails because one family could not be read
                app.log.exception("Cannot render metric %s", metric.name)
        return "\n".join(lines) + "\n"


REGISTRY = Registry()

# --- updated per batch -------------------------------------------------------------

EVENTS_IN = REGISTRY.register(
    Counter(
        "stock_tracker_events_in_total",
        "Input messages (valid or not) read by the ingest agent, by topic.",
        "topic",
    )
)
EVENTS_OUT = REGISTRY.register(
    Counter(
        "stock_tracker_events_out_total",
        "Messages written in committed batches, by topic (changelog records excluded).",
        "topic",
    )
)
DEAD_LETTERS = REGISTRY.register(
    Counter(
        "stock_tracker_dead_letters_total",
        "Rejected input messages written to dead-letters in committed batches.",
    )
)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_LATENCY = REGISTRY.register(
    Histogram(
        "stock_tracker_batch_latency_seconds",
        "Seconds from the Kafka timestamp of the newest input message of an ingest batch "
        "to the commit of that batch.",
        LATENCY_BUCKETS,
    )
)

MERGE_WAIT = REGISTRY.register(
    Histogram(
        "stock_tracker_merge_wait_seconds",
        "Seconds a valid event waited in the join's event-time merge: from the fetch that "
        "brought it to the tracker to its application (agents/tracker.py).",
        (0.0005, 0.001, *LATENCY_BUCKETS),
    )
)

PRODUCER_WAIT = REGISTRY.register(
    Histogram(
        "stock_tracker_producer_wait_seconds",
        "Seconds a batch waited for its transactional producer (another batch of the same "
        "producer committing: ingest and the tracker share one per partition number).",
        (0.0005, 0.001, *LATENCY_BUCKETS),
    )
)
COMMIT_WRITE = REGISTRY.register(
    Histogram(
        "stock_tracker_commit_write_seconds",
        "Seconds from a transaction's first record to every record and its offsets "
        "acknowledged (AddPartitionsToTxn, Produce, AddOffsetsToTxn, TxnOffsetCommit).",
        (0.0005, 0.001, *LATENCY_BUCKETS),
    )
)
COMMIT_END = REGISTRY.register(
    Histogram(
        "stock_tracker_commit_end_seconds",
        "Seconds of a transaction's EndTxn (commit) request.",
        (0.0005, 0.001, *LATENCY_BUCKETS),
    )
)


def observe_commit(write_s: float, end_s: float) -> None:
    """One transaction committed: how long its writes and its EndTxn took."""
    COMMIT_WRITE.observe(write_s)
    COMMIT_END.observe(end_s)


_committed_offsets: dict[Any, int] = {}
"""Input partition (TP) -> next offset to read, as of the last committed batch."""


def count_input(records: Mapping[Any, Sequence[Any]]) -> float | None:
    """Count one fetch of input records (aiokafka ``ConsumerRecord``) by topic.

    Returns the newest Kafka timestamp (epoch seconds), for
    :attr:`app.engine.transaction.Batch.newest_input_ts`.
    """
    newest_ms: int | None = None
    for tp, batch in records.items():
        EVENTS_IN.inc(len(batch), tp.topic)
        for record in batch:
            ts = record.timestamp
            if ts is not None and (newest_ms is None or ts > newest_ms):
                newest_ms = ts
    return None if newest_ms is None else newest_ms / 1000.0


def committed(
    outputs: Sequence[tuple[str, Any, Any, Any]],
    sources: dict[Any, int],
    newest_input_ts: float | None,
) -> None:
    """Account for a batch whose commit just succeeded (called by app/engine/transaction.py)."""
    per_topic: dict[str, int] = {}
    for out in outputs:
        per_topic[out[0]] = per_topic.get(out[0], 0) + 1
    dl_topic = _dead_letter_topic()
    for topic, n in per_topic.items():
        EVENTS_OUT.inc(n, topic)
        if topic == dl_topic:
            DEAD_LETTERS.inc(n)
    _committed_offsets.update(sources)
    if newest_input_ts is not None:
        BATCH_LATENCY.observe(max(0.0, time.time() - newest_input_ts))


def _dead_letter_topic() -> str:
    name: str = topics.dead_letters.get_topic_name()
    return name


# --- read when scraped ---------------------------------------------------------------


def consumer_lag() -> list[tuple[Labels, float]]:
    """``highwater - committed`` per assigned input partition with data (best effort).

    Covers the input topics and the internal SKU-keyed one. The high-water mark is the
    one the consumer last fetched (the last stable offset under exactly-once); the
    committed offset is the one of this worker's last committed batch, or the group's
    committed offset from the last assignment. A transactional topic (the SKU-keyed
    one) ends with a commit marker, so a caught-up partition reads 1 there. With
    at_least_once, Faust commits offsets a little after the batch; this counts the
    batch as committed when its output is written.
    """
    consumer: Any = app.consumer
    try:
        assigned = consumer.assignment()
    except Exception:  # not started yet, or stopping
        assigned = set()
    inputs = {t.get_topic_name() for t in (topics.orders, topics.stock, topics.events_by_sku)}
    faust_committed = getattr(consumer, "_committed_offset", {})
    found: list[tuple[Labels, float]] = []
    for tp in sorted(assigned):
        if tp.topic not in inputs:
            continue
        try:
            highwater = consumer.highwater(tp)
        except Exception:
            continue
        done = max(
            (o for o in (_committed_offsets.get(tp), faust_committed.get(tp)) if o is not None),
            default=None,
        )
        if highwater is None or done is None:
            continue
        labels: Labels = (("topic", tp.topic), ("partition", str(tp.partition)))
        found.append((labels, float(max(highwater - done, 0))))
    for source in _lag_sources:
        for tp, lag in source().items():
            if tp not in assigned:
                labels = (("topic", tp.topic), ("partition", str(tp.partition)))
                found.append((labels, float(lag)))
    return found


_lag_sources: list[Callable[[], dict[Any, int]]] = []


def lag_source(source: Callable[[], dict[Any, int]]) -> Callable[[], None]:
    """Add ``source`` (per partition, its lag) to the consumer lag, for a reader outside
    the group (app/engine/input_reader.py); returns the function that removes it."""
    _lag_sources.append(source)
    return lambda: _lag_sources.remove(source)


REGISTRY.register(
    Gauge(
        "stock_tracker_consumer_lag",
        "Offsets not yet committed per assigned input partition (high-water mark minus "
        "committed offset; 1 when caught up on the transactional SKU-keyed topic), or, "
        "for the direct join's reader of every input partition, not yet read into the "
        "join (last stable offset minus position); partitions not fetched yet are left "
        "out.",
        consumer_lag,
    )
)
