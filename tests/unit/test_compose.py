"""docker-compose.yml keeps its promises (no Docker engine here, so the file is parsed).

What is checked: every broker writes its topic data into a volume mounted into it
(``KAFKA_LOG_DIRS`` inside the mount; the image's default is under ``/tmp``); every
worker's DATA_DIR is its own volume, and the README says what that volume holds; the
``cluster3`` profile is three KRaft brokers of one cluster with replication factor 3 and
``min.insync.replicas`` 2, and a worker that asks for three replicas.
"""

from __future__ import annotations

from pathlib import PurePosixPath
from typing import Any

import pytest
import yaml

from app.domain.settings import Settings
from tests.integration.harness import REPO

COMPOSE = REPO / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    doc = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(doc, dict)
    return doc


def services(compose: dict[str, Any], profile: str | None) -> dict[str, dict[str, Any]]:
    """What ``docker compose [--profile P] up`` starts: no profile, or profile P."""
    return {
        name: svc
        for name, svc in compose["services"].items()
        if not svc.get("profiles") or (profile is not None and profile in svc["profiles"])
    }


def env(svc: dict[str, Any]) -> dict[str, str]:
    raw = svc.get("environment", {})
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {k: str(v) for k, v in raw.items()}


def mounts(compose: dict[str, Any], svc: dict[str, Any]) -> dict[PurePosixPath, str]:
    """Container path -> named volume, for every named-volume mount of ``svc``."""
    out = {}
    for spec in svc.get("volumes", []):
        source, target = (
            spec.split(":")[:2]
            if isinstance(spec, str)
            else (
                spec["source"],
                spec["target"],
            )
        )
        assert source in compose.get("volumes", {}), f"{source} is not a named volume"
        out[PurePosixPath(target)] = source
    return out


def volume_holding(compose: dict[str, Any], svc: dict[str, Any], path: str) -> str | None:
    p = PurePosixPath(path)
    for target, volume in mounts(compose, svc).items():
        if p == target or target in p.parents:
            return volume
    return None


def is_broker(svc: dict[str, Any]) -> bool:
    return "broker" in env(svc).get("KAFKA_PROCESS_ROLES", "")


def is_worker(svc: dict[str, Any]) -> bool:
    return "build" in svc


def test_every_broker_keeps_its_topic_data_in_its_own_volume(compose: dict[str, Any]) -> None:
    brokers = {n: s for n, s in compose["services"].items() if is_broker(s)}
    assert len(brokers) == 4  # the single-node stack's and cluster3's three
    seen: set[str] = set()
    for name, svc in brokers.items():
        dirs = env(svc).get("KAFKA_LOG_DIRS")
        assert dirs, f"{name}: KAFKA_LOG_DIRS unset, data would go to the image's /tmp"
        for d in dirs.split(","):
            volume = volume_holding(compose, svc, d)
            assert volume is not None, f"{name}: {d} is not inside a mounted volume"
            assert volume not in seen, f"{name}: volume {volume} shared with another broker"
            seen.add(volume)


def test_every_worker_keeps_its_state_dir_in_its_own_volume(compose: dict[str, Any]) -> None:
    workers = {n: s for n, s in compose["services"].items() if is_worker(s)}
    assert {"worker", "worker-2", "c3-worker"} <= set(workers)
    seen: set[str] = set()
    for name, svc in workers.items():
        data_dir = env(svc)["DATA_DIR"]
        volume = volume_holding(compose, svc, data_dir)
        assert volume is not None, f"{name}: DATA_DIR {data_dir} is not a volume"
        assert volume not in seen, f"{name}: {volume} shared with another worker"
        seen.add(volume)
        # Every worker's settings are valid as written (a bad one would stop it at start).
        Settings.from_env(env(svc))


def test_the_readme_says_what_the_worker_volume_holds() -> None:
    # Local state is kept and reused across restarts (app/engine/checkpoint.py), and rebuilt
    # from the changelogs when it is missing: the README says both, and that the
    # changelogs (in kafka-data) are what must be kept.
    readme = (REPO / "README.md").read_text()
    docker = readme[readme.index("## Running with Docker") :]
    docker = docker[: docker.index("\n## ", 1)]
    assert "worker-state" in docker and "rebuil" in docker and "reuses" in docker
    assert "deletes its local tables" not in docker
    assert "kafka-data" in docker


def test_the_default_stack_is_one_broker_and_one_worker(compose: dict[str, Any]) -> None:
    default = services(compose, None)
    assert sorted(default) == ["kafka", "worker"]
    broker = env(default["kafka"])
    assert broker["KAFKA_CONTROLLER_QUORUM_VOTERS"] == "1@kafka:9093"
    assert env(default["worker"])["BROKER_URL"] == "kafka://kafka:9092"


def test_cluster3_is_three_brokers_rf3_min_isr2_and_a_worker_asking_for_3(
    compose: dict[str, Any],
) -> None:
    c3 = {n: s for n, s in compose["services"].items() if "cluster3" in s.get("profiles", [])}
    brokers = {n: env(s) for n, s in c3.items() if is_broker(s)}
    workers = {n: s for n, s in c3.items() if is_worker(s)}
    assert len(brokers) == 3 and len(workers) == 1

    ids = {name: e["KAFKA_NODE_ID"] for name, e in brokers.items()}
    assert sorted(ids.values()) == ["1", "2", "3"]
    voters = {e["KAFKA_CONTROLLER_QUORUM_VOTERS"] for e in brokers.values()}
    assert len(voters) == 1, "every broker must name the same controller quorum"
    assert sorted(voters.pop().split(",")) == sorted(f"{i}@{n}:9093" for n, i in ids.items())
    assert len({e["CLUSTER_ID"] for e in brokers.values()}) == 1
    for name, e in brokers.items():
        assert e["KAFKA_PROCESS_ROLES"] == "broker,controller", name
        assert e["KAFKA_DEFAULT_REPLICATION_FACTOR"] == "3", name
        assert e["KAFKA_MIN_INSYNC_REPLICAS"] == "2", name
        assert e["KAFKA_OFFSETS_TOPIC_REPLICATION_FACTOR"] == "3", name
        assert e["KAFKA_TRANSACTION_STATE_LOG_REPLICATION_FACTOR"] == "3", name
        assert e["KAFKA_TRANSACTION_STATE_LOG_MIN_ISR"] == "2", name
        assert f"PLAINTEXT://{name}:9092" in e["KAFKA_ADVERTISED_LISTENERS"], name

    ((name, worker),) = workers.items()
    wenv = env(worker)
    assert wenv["REPLICATION_FACTOR"] == "3"
    # It bootstraps from all three (any one may be the one that is down)...
    assert sorted(wenv["BROKER_URL"].split(";")) == sorted(f"kafka://{n}:9092" for n in brokers)
    # ...and waits for all three before it starts.
    assert set(worker["depends_on"]) == set(brokers)
    # Its own group and topics: never mixed with the single-node stack's.
    assert wenv["APP_ID"] != env(compose["services"]["worker"])["APP_ID"]


def test_host_ports_do_not_collide(compose: dict[str, Any]) -> None:
    published = [
        str(p).split(":")[0] for svc in compose["services"].values() for p in svc.get("ports", [])
    ]
    assert len(published) == len(set(published)), published
