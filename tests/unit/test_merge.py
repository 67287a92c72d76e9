"""The join's order (app/domain/rules/merge.py) against the contract's definition of it."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from app.domain.rules.merge import NEVER, ORDERS, STOCK, Key, Merge, Source


def contract_order(partitions: dict[Source, list[float]]) -> list[Key]:
    """The contract's order: sorted by (max ts of the partition up to the event,
    topic, partition, offset)."""
    keys = []
    for (code, partition), stamps in partitions.items():
        mts = NEVER
        for offset, ts in enumerate(stamps):
            mts = max(mts, ts)
            keys.append((mts, code, partition, offset))
    return sorted(keys)


def keyed(partitions: dict[Source, list[float]]) -> dict[Source, list[Key]]:
    out = {}
    for (code, partition), stamps in partitions.items():
        mts = NEVER
        keys = []
        for offset, ts in enumerate(stamps):
            mts = max(mts, ts)
            keys.append((mts, code, partition, offset))
        out[code, partition] = keys
    return out


stamps = st.lists(st.integers(0, 40).map(float), max_size=25)
inputs = st.fixed_dictionaries(
    {(ORDERS, 0): stamps, (ORDERS, 1): stamps, (STOCK, 0): stamps, (STOCK, 1): stamps}
)


@given(inputs, st.integers(0, 2**32), st.integers(1, 6))
@settings(max_examples=300, deadline=None)
def test_any_interleaving_of_batches_applies_events_in_the_contracts_order(
    partitions: dict[Source, list[float]], seed: int, most_per_batch: int
) -> None:
    """Sources read in batches of any size, in any interleaving, each reporting its
    progress after every batch and 'at end' only after its last: the events come out
    in exactly the contract's order, and all of them."""
    rnd = random.Random(seed)
    keys = keyed(partitions)
    merge: Merge[Key] = Merge(partitions)
    cursor = dict.fromkeys(partitions, 0)
    out: list[Key] = []
    while True:
        open_sources = [s for s in partitions if cursor[s] < len(keys[s]) or cursor[s] == 0]
        if not open_sources:
            break
        source = rnd.choice(open_sources)
        n = rnd.randint(0, most_per_batch)
        batch = keys[source][cursor[source] : cursor[source] + n]
        cursor[source] += len(batch)
        if not keys[source]:
            cursor[source] = 1  # an empty partition reports once
        # Only some events reach this SKU partition; the report always does.
        for key in batch:
            if rnd.random() < 0.7:
                assert merge.push(key, key)
        at_end = cursor[source] >= len(keys[source])
        mts = max((k[0] for k in keys[source][: cursor[source]]), default=NEVER)
        merge.report(source, mts, cursor[source], at_end)
        out.extend(item for _, item in merge.ready())
    assert len(merge) == 0
    expected = [k for k in contract_order(partitions) if k in set(out)]
    assert out == expected


def test_a_source_that_never_reported_holds_everything_back() -> None:
    merge: Merge[str] = Merge([(ORDERS, 0), (STOCK, 0)])
    merge.push((5.0, ORDERS, 0, 0), "o")
    merge.report((ORDERS, 0), 5.0, 1, True)
    assert list(merge.ready()) == []
    merge.report((STOCK, 0), NEVER, 0, True)  # empty, read to its end
    assert [item for _, item in merge.ready()] == ["o"]


def test_a_lagging_source_is_waited_for_until_it_passes_the_event() -> None:
    merge: Merge[str] = Merge([(ORDERS, 0), (STOCK, 0)])
    merge.push((50.0, ORDERS, 0, 0), "order@50")
    merge.report((ORDERS, 0), 50.0, 1, True)
    merge.report((STOCK, 0), 10.0, 3, False)  # stock has more, and is at ts 10
    assert list(merge.ready()) == []
    merge.push((20.0, STOCK, 0, 3), "stock@20")
    merge.report((STOCK, 0), 20.0, 4, False)
    assert [i for _, i in merge.ready()] == ["stock@20"]
    merge.report((STOCK, 0), 60.0, 9, False)  # moved past 50 (events for other SKUs)
    assert [i for _, i in merge.ready()] == ["order@50"]


def test_ties_go_to_orders_then_the_lower_partition() -> None:
    merge: Merge[str] = Merge([(ORDERS, 0), (ORDERS, 1), (STOCK, 0)])
    merge.push((7.0, STOCK, 0, 0), "stock")
    merge.push((7.0, ORDERS, 1, 0), "orders/1")
    merge.push((7.0, ORDERS, 0, 0), "orders/0")
    for source in merge.progress:
        merge.report(source, 7.0, 1, False)
    # Every source is at 7 and may still send more at 7: only the smallest is safe.
    assert [i for _, i in merge.ready()] == ["orders/0"]
    merge.report((ORDERS, 0), 8.0, 2, False)
    assert [i for _, i in merge.ready()] == ["orders/1"]
    for source in merge.progress:
        merge.report(source, 7.0, 1, True)
    assert [i for _, i in merge.ready()] == ["stock"]


def test_an_event_older_than_its_partitions_max_waits_for_nothing() -> None:
    """Its key uses the partition's max ts so far, not its own ts."""
    merge: Merge[str] = Merge([(ORDERS, 0), (STOCK, 0)])
    merge.push((30.0, ORDERS, 0, 0), "o@30")
    merge.push((30.0, ORDERS, 0, 1), "o@5 after o@30")
    merge.report((ORDERS, 0), 30.0, 2, False)
    merge.report((STOCK, 0), 31.0, 1, False)
    assert [i for _, i in merge.ready()] == ["o@30", "o@5 after o@30"]


def test_a_source_read_to_its_end_does_not_hold_back_and_its_late_event_goes_first() -> None:
    merge: Merge[str] = Merge([(ORDERS, 0), (STOCK, 0)])
    merge.report((STOCK, 0), 5.0, 1, True)
    merge.push((100.0, ORDERS, 0, 0), "o@100")
    merge.report((ORDERS, 0), 100.0, 1, True)
    assert [i for _, i in merge.ready()] == ["o@100"]
    # Live: stock then gets an event older than what was applied: applied on arrival.
    merge.push((50.0, STOCK, 0, 1), "s@50")
    merge.report((STOCK, 0), 50.0, 2, True)
    assert [i for _, i in merge.ready()] == ["s@50"]


def test_a_redelivered_event_is_not_queued_twice() -> None:
    merge: Merge[str] = Merge([(ORDERS, 0)])
    assert merge.push((1.0, ORDERS, 0, 4), "a")
    assert not merge.push((1.0, ORDERS, 0, 4), "a again")
    assert not merge.push((1.0, ORDERS, 0, 3), "older")
    merge.report((ORDERS, 0), 1.0, 5, True)
    assert [i for _, i in merge.ready()] == ["a"]


def test_resume_points_start_at_the_oldest_waiting_event_else_at_the_progress() -> None:
    merge: Merge[str] = Merge([(ORDERS, 0), (STOCK, 0)])
    merge.push((5.0, ORDERS, 0, 3), "a")
    merge.push((9.0, ORDERS, 0, 4), "b")
    merge.report((ORDERS, 0), 9.0, 7, True)
    merge.report((STOCK, 0), 4.0, 2, False)
    # Stock holds back both orders: reading orders/0 again from 3 with mts 5 gives "a"
    # and "b" their keys again; stock/0 resumes where it got to.
    assert merge.resume_points() == {(ORDERS, 0): (3, 5.0), (STOCK, 0): (2, 4.0)}
    merge.report((STOCK, 0), 9.5, 3, True)
    assert [item for _, item in merge.ready()] == ["a", "b"]
    assert merge.resume_points() == {(ORDERS, 0): (7, 9.0), (STOCK, 0): (3, 9.5)}
