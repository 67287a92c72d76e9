"""Where a Kafka transaction's time goes: each request of aiokafka's commit, and LSO lag.

A bare aiokafka loop in the shape of one of the worker's commits (no Faust, no worker):
each of ``--producers`` transactional producers, side by side as ingest's are, runs
transactions of one record to each of ``--partitions`` partitions plus one consumer
offset (TxnOffsetCommit), one after the other. Every request the producers send is
timed by its type (aiokafka sends them one after another: AddPartitionsToTxn, Produce,
AddOffsetsToTxn, TxnOffsetCommit, EndTxn), and a read_committed reader (fetch wait
10 ms, as bench/latency.py's) notes when each transaction's records became readable,
after ``commit_transaction`` returned: the markers' write and the LSO's move.

A benchmark, not a test: it asserts nothing. The load average is printed with it.

    .venv/bin/python bench/txn_rounds.py [--producers 8] [--partitions 4] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.integration.harness import on_a_broker  # noqa: E402

TOPIC = "txn-rounds"
INPUT = "txn-rounds-in"
GROUP = "txn-rounds-group"


def ms(values: list[float]) -> str:
    if not values:
        return "none"
    values = sorted(values)
    p99 = values[min(len(values) - 1, int(0.99 * len(values)))]
    return (
        f"n {len(values):5d}, mean {1000 * statistics.fmean(values):6.1f}, "
        f"p50 {1000 * values[len(values) // 2]:6.1f}, p99 {1000 * p99:6.1f}, "
        f"max {1000 * values[-1]:6.1f} ms"
    )


def error_codes(found: Any) -> list[int]:
    """Every non-zero ``error_code`` in a response (as ``to_object()`` gives it)."""
    if isinstance(found, dict):
        codes = [v for k, v in found.items() if k == "error_code" and v]
        return codes + [c for v in found.values() for c in error_codes(v)]
    if isinstance(found, list | tuple):
        return [c for v in found for c in error_codes(v)]
    return []


def timed(
    producer: AIOKafkaProducer, rounds: dict[str, list[float]], errors: dict[str, int]
) -> None:
    """Time every request ``producer`` sends, by request type (wraps its client's send),
    and count the errors the broker answered with (by request type and code)."""
    client: Any = producer.client
    send = client.send

    async def timed_send(node_id: Any, request: Any, **kw: Any) -> Any:
        started = time.perf_counter()
        name = type(request).__name__.split("Request")[0]
        try:
            response = await send(node_id, request, **kw)
        finally:
            rounds[name].append(time.perf_counter() - started)
        try:
            codes = error_codes(response.to_object())
        except Exception:
            codes = []
        for code in codes:
            errors[f"{name} error {code}"] += 1
        return response

    client.send = timed_send


async def run(
    bootstrap: str,
    producers: int,
    partitions: int,
    seconds: float,
    backoff_ms: int,
    lockstep: bool,
) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    await admin.create_topics([NewTopic(TOPIC, partitions, 1), NewTopic(INPUT, producers, 1)])
    await admin.close()
    rounds: dict[str, list[float]] = defaultdict(list)
    errors: dict[str, int] = defaultdict(int)
    commits: list[float] = []
    firsts: list[float] = []
    visible: list[float] = []
    committed_at: dict[bytes, float] = {}
    reader = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        isolation_level="read_committed",
        enable_auto_commit=False,
        fetch_max_wait_ms=10,
    )
    await reader.start()
    reader.assign([TopicPartition(TOPIC, p) for p in range(partitions)])
    await reader.seek_to_end()
    stop = time.monotonic() + seconds
    barrier = asyncio.Barrier(producers)
    cycles: list[float] = []
    go = [True]

    async def read() -> None:
        while time.monotonic() < stop + 2:
            got = await reader.getmany(timeout_ms=100)
            now = time.perf_counter()
            for records in got.values():
                for r in records:
                    at = committed_at.pop(r.value, None)
                    if at is not None:
                        visible.append(now - at)

    async def loop(i: int) -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=bootstrap,
            transactional_id=f"txn-rounds-{i}",
            retry_backoff_ms=backoff_ms,
        )
        await producer.start()
        timed(producer, rounds, errors)
        n = 0
        cycle_from = time.perf_counter()
        while go[0]:
            n += 1
            value = f"{i}-{n}".encode()
            started = time.perf_counter()
            await producer.begin_transaction()
            sent = [await producer.send(TOPIC, value, partition=p) for p in range(partitions)]
            await asyncio.gather(*sent)
            await producer.send_offsets_to_transaction({TopicPartition(INPUT, i): n}, GROUP)
            await producer.commit_transaction()
            done = time.perf_counter()
            (firsts if n == 1 else commits).append(done - started)
            committed_at[value] = done
            if not lockstep:
                go[0] = time.monotonic() < stop
            else:
                # As ingest and the tracker do: the next round begins once every
                # producer's transaction of this one committed. Producer 0 decides
                # whether there is one, so that all do the same number of rounds.
                if i == 0:
                    go[0] = time.monotonic() < stop
                await barrier.wait()
                if i == 0:
                    now = time.perf_counter()
                    cycles.append(now - cycle_from)
                    cycle_from = now
        await producer.stop()

    reading = asyncio.create_task(read())
    await asyncio.gather(*(loop(i) for i in range(producers)))
    await reading
    await reader.stop()
    load = os.getloadavg()[0]
    print(
        f"{producers} transactional producers side by side, each transaction 1 record to "
        f"each of {partitions} partitions + 1 offset, {seconds:g} s "
        f"retry backoff {backoff_ms} ms, {'in lockstep' if lockstep else 'independent'} "
        f"(load average {load:.1f}, {os.cpu_count()} CPUs):"
    )
    print(f"  a whole transaction (begin -> commit returned), after the first: {ms(commits)}")
    print(f"  the first transaction of each producer: {ms(firsts)}")
    if lockstep:
        print(f"  a round (every producer's transaction committed): {ms(cycles)}")
    for name in ("AddPartitionsToTxn", "Produce", "AddOffsetsToTxn", "TxnOffsetCommit", "EndTxn"):
        print(f"  {name}: {ms(rounds.pop(name, []))}")
    for name, values in sorted(rounds.items()):
        print(f"  {name} (other): {ms(values)}")
    print("  errors answered: " + (", ".join(f"{k}: {v}" for k, v in errors.items()) or "none"))
    print(f"  commit returned -> readable (markers, LSO, reader's fetch): {ms(visible)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--producers", type=int, default=8)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--backoff-ms", type=int, default=20, help="retry_backoff_ms")
    parser.add_argument(
        "--lockstep",
        action="store_true",
        help="a round of transactions waits for all of them (as ingest's do)",
    )
    parser.add_argument("--bootstrap", default=None)
    args = parser.parse_args()
    on_a_broker(
        args.bootstrap,
        lambda bootstrap: asyncio.run(
            run(
                bootstrap,
                args.producers,
                args.partitions,
                args.seconds,
                args.backoff_ms,
                args.lockstep,
            )
        ),
    )


if __name__ == "__main__":
    main()
