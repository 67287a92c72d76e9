"""Settings: defaults, parsing, and one clear line for every bad value."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from app.domain.settings import Settings, SettingsError

REPO = Path(__file__).resolve().parents[2]


def test_defaults_are_the_contracts() -> None:
    s = Settings.from_env({})
    assert s.broker_url == "kafka://localhost:9092"
    assert s.web_port == 6066
    assert (s.reorder_point, s.reorder_target) == (20, 100)
    assert (s.tumbling_seconds, s.hopping_seconds, s.hopping_step_seconds) == (60, 300, 60)
    assert (s.window_grace_seconds, s.expedite_threshold) == (10, 2)
    assert s.processing_guarantee == "exactly_once"
    assert s.max_future_seconds == 3600
    assert s.window_idle_close_seconds == 0  # idle close off
    assert s.max_waiting_requests == 1000


def test_values_are_parsed() -> None:
    s = Settings.from_env(
        {
            "BROKER_URL": "localhost:9093",
            "WEB_PORT": " 7000 ",
            "REORDER_POINT": "0",
            "PROCESSING_GUARANTEE": "AT_LEAST_ONCE",
            "WEB_ADVERTISED_URL": "http://worker-2:7000/",
            "PEER_TIMEOUT_SECONDS": "1.5",
            "MAX_FUTURE_SECONDS": "60",
            "WINDOW_IDLE_CLOSE_SECONDS": "2.5",
            "MAX_WAITING_REQUESTS": "3",
        }
    )
    assert s.broker_url == "kafka://localhost:9093"
    assert s.web_port == 7000 and s.reorder_point == 0
    assert s.processing_guarantee == "at_least_once"
    assert s.advertised_url == "http://worker-2:7000"
    assert s.peer_timeout_seconds == 1.5
    assert s.max_future_seconds == 60
    assert s.window_idle_close_seconds == 2.5
    assert s.max_waiting_requests == 3
    assert Settings.from_env({"WINDOW_IDLE_CLOSE_SECONDS": "0"}).window_idle_close_seconds == 0


@pytest.mark.parametrize("name", ["REORDER_POINT", "TUMBLING_SECONDS", "BROKER_URL", "DATA_DIR"])
@pytest.mark.parametrize("empty", ["", "   "])
def test_an_empty_value_is_an_error_naming_the_setting(name: str, empty: str) -> None:
    # `REORDER_POINT=` is a mistake far more often than a wish for the default.
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: empty})
    assert str(info.value).startswith(f"{name} is set but empty; unset it to use the default")


def test_an_empty_value_is_fine_where_the_default_is_empty() -> None:
    s = Settings.from_env({"TOPIC_PREFIX": "", "WEB_ADVERTISED_URL": " "})
    assert s.topic_prefix == "" and s.web_advertised_url == ""


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"HOPPING_SECONDS": "7"},
            "HOPPING_SECONDS must be at least HOPPING_STEP_SECONDS (60) and a multiple of it, "
            "got 7",
        ),
        (
            {"HOPPING_SECONDS": "330"},
            "HOPPING_SECONDS must be a multiple of HOPPING_STEP_SECONDS (60), got 330",
        ),
        (
            {"HOPPING_STEP_SECONDS": "400"},
            "HOPPING_STEP_SECONDS must be at most HOPPING_SECONDS (300), got 400",
        ),
        (
            {"HOPPING_STEP_SECONDS": "7"},
            "HOPPING_STEP_SECONDS must divide HOPPING_SECONDS (300), got 7",
        ),
        (
            {"HOPPING_SECONDS": "7", "HOPPING_STEP_SECONDS": "3"},
            "HOPPING_SECONDS must be a multiple of HOPPING_STEP_SECONDS (3), got 7",
        ),
        (
            {"REORDER_POINT": "200"},
            "REORDER_POINT must be less than REORDER_TARGET (100), got 200",
        ),
        (
            {"REORDER_TARGET": "5"},
            "REORDER_TARGET must be greater than REORDER_POINT (20), got 5",
        ),
    ],
)
def test_a_rule_between_two_settings_names_the_one_that_was_set(
    env: dict[str, str], message: str
) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env(env)
    assert str(info.value) == message


def test_advertised_url_defaults_to_the_bound_host_and_port() -> None:
    assert Settings.from_env({"WEB_HOST": "127.0.0.1", "WEB_PORT": "7001"}).advertised_url == (
        "http://127.0.0.1:7001"
    )
    assert Settings.from_env({}).advertised_url.endswith(":6066")


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("WEB_PORT", "x"),
        ("WEB_PORT", "70000"),
        ("BROKER_URL", "http://localhost:9092"),
        ("BROKER_URL", "localhost"),
        ("TOPIC_PARTITIONS", "0"),
        ("STORE_URL", "redis://"),
        ("APP_ID", "has space"),
        ("TOPIC_PREFIX", "a/b"),
        ("REORDER_POINT", "-1"),
        ("REORDER_TARGET", "5"),
        ("TUMBLING_SECONDS", "1.5"),
        ("HOPPING_STEP_SECONDS", "7"),
        ("WINDOW_GRACE_SECONDS", "soon"),
        ("EXPEDITE_THRESHOLD", "-3"),
        ("PROCESSING_GUARANTEE", "maybe"),
        ("WEB_ADVERTISED_URL", "worker-2:7000"),
        ("WEB_ADVERTISED_URL", "http://worker-2"),
        ("PEER_TIMEOUT_SECONDS", "0"),
        ("BATCH_WINDOW_S", "inf"),
        ("MAX_FUTURE_SECONDS", "0"),
        ("MAX_FUTURE_SECONDS", "-5"),
        ("MAX_FUTURE_SECONDS", "an hour"),
        ("BROKER_WAIT_SECONDS", "0"),
        ("WINDOW_IDLE_CLOSE_SECONDS", "-1"),
        ("WINDOW_IDLE_CLOSE_SECONDS", "nan"),
        ("WINDOW_IDLE_CLOSE_SECONDS", "inf"),
        ("WINDOW_IDLE_CLOSE_SECONDS", "soon"),
        ("MAX_WAITING_REQUESTS", "0"),
        ("REPLICATION_FACTOR", "0"),
        ("REPLICATION_FACTOR", "three"),
        ("WORKER_INSTANCE_ID", "worker 1"),
        ("WORKER_INSTANCE_ID", ".."),
        ("WORKER_INSTANCE_ID", "x" * 250),
        ("FAILURE_DETECTION_SECONDS", "5.9"),
        ("FAILURE_DETECTION_SECONDS", "1801"),
        ("FAILURE_DETECTION_SECONDS", "nan"),
        ("FAILURE_DETECTION_SECONDS", "soon"),
        ("TABLE_STANDBY_REPLICAS", "-1"),
        ("TABLE_STANDBY_REPLICAS", "one"),
    ],
)
def test_a_bad_value_names_its_setting(name: str, value: str) -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({name: value})
    message = str(info.value)
    assert name in message and "\n" not in message


def test_the_worker_stops_at_start_with_one_line() -> None:
    env = dict(os.environ, WEB_PORT="x", PYTHONPATH=str(REPO))
    done = subprocess.run(
        [sys.executable, "-m", "faust", "-A", "app", "worker"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "stock-tracker: bad setting: WEB_PORT must be an integer between 1 and 65535, got 'x'"
    ]


def test_replication_factor_defaults_to_the_clusters_size() -> None:
    # None: decided at start from the cluster (3 with 3 brokers or more, else 1).
    assert Settings.from_env({}).replication_factor is None
    assert Settings.from_env({"REPLICATION_FACTOR": "3"}).replication_factor == 3


def test_membership_is_dynamic_and_failure_detection_10_s_by_default() -> None:
    s = Settings.from_env({})
    assert s.worker_instance_id == ""  # no id: dynamic membership
    assert s.failure_detection_seconds == 10.0
    assert s.heartbeat_seconds == 0.5


def test_membership_settings_are_parsed() -> None:
    s = Settings.from_env({"WORKER_INSTANCE_ID": "worker-1.a_b", "FAILURE_DETECTION_SECONDS": "6"})
    assert s.worker_instance_id == "worker-1.a_b"
    assert s.failure_detection_seconds == 6.0
    # Well within a third of the session timeout (one lost heartbeat is no failure), and
    # often, so a rebalance is noticed within half a second.
    assert s.heartbeat_seconds == 0.5
    assert Settings.from_env({"FAILURE_DETECTION_SECONDS": "1800"}).heartbeat_seconds == 0.5
    assert Settings.from_env({"WORKER_INSTANCE_ID": ""}).worker_instance_id == ""


def test_one_standby_replica_by_default_and_none_on_request() -> None:
    # With one worker there is no other worker to hold it (tables/standby.py).
    assert Settings.from_env({}).table_standby_replicas == 1
    assert Settings.from_env({"TABLE_STANDBY_REPLICAS": "0"}).table_standby_replicas == 0
    assert Settings.from_env({"TABLE_STANDBY_REPLICAS": "2"}).table_standby_replicas == 2
