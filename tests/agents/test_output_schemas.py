"""The published output schemas (app/domain/schemas.py) against what the agents really write.

Every output message must be valid under its topic's schema and carry exactly the
schema's fields: a field added to or dropped from a record builder without the schema
(or the other way round) fails here.
"""

from __future__ import annotations

from collections import defaultdict
from types import SimpleNamespace
from typing import Any

import orjson
from jsonschema import Draft202012Validator

from agents.ingest import dead_letter
from app.domain import schemas
from app.engine import topics
from tests.agents.test_tracker import T0, Feed, delivery, order, run

NAMES = {
    topics.order_status.get_topic_name(): "order-status",
    topics.stock_levels.get_topic_name(): "stock-levels",
    topics.supplier_orders.get_topic_name(): "supplier-orders",
    topics.expedites.get_topic_name(): "expedites",
    topics.window_results.get_topic_name(): "window-results",
}


def check(topic: str, value: Any) -> None:
    schema = schemas.schema(topic)
    errors = [e.message for e in Draft202012Validator(schema).iter_errors(value)]
    assert not errors, (topic, value, errors)
    assert set(value) == set(schema["properties"]), (topic, sorted(value))


def test_every_tracker_output_matches_its_schema_exactly() -> None:
    feed = Feed()
    seen: dict[str, int] = defaultdict(int)
    script = [
        [delivery("d1", 10, T0), *(order(f"o{i}", 4, T0 + i) for i in range(5))],
        [delivery("d2", 200, T0 + 30), order("o9", 1, T0 + 400)],
    ]
    for events in script:
        batch = run(feed.envelope(*events))
        for topic, _key, value, _partition in batch.outputs:
            name = NAMES[topic]
            check(name, orjson.loads(value))
            seen[name] += 1
    # Every kind of output was written and checked at least once.
    assert set(seen) == set(NAMES.values()), dict(seen)


def test_a_dead_letter_matches_its_schema_exactly() -> None:
    for key, value in [(b"k", b"\xff not json"), (None, None)]:
        record = SimpleNamespace(topic="orders", partition=1, offset=7, key=key, value=value)
        check("dead-letters", orjson.loads(dead_letter(record, "not valid JSON")))
