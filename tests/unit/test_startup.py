"""Start-up checks (app/engine/startup.py) on their own: each failure one line naming a setting."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from app.engine.startup import StartupError, check_data_dir, check_web_port, wait_for_broker


def test_data_dir_is_created_when_missing(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b"
    check_data_dir(target)
    assert target.is_dir()
    assert list(target.iterdir()) == []  # the write probe leaves nothing behind


def test_data_dir_that_is_a_file(tmp_path: Path) -> None:
    a_file = tmp_path / "f"
    a_file.write_text("x")
    with pytest.raises(StartupError, match=r"^DATA_DIR is not a folder: .* is a file$"):
        check_data_dir(a_file)
    with pytest.raises(StartupError, match=r"^DATA_DIR cannot be created: .*"):
        check_data_dir(a_file / "sub")


def test_web_port_free_and_in_use() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        port = taken.getsockname()[1]
        taken.listen()
        with pytest.raises(StartupError, match=rf"^WEB_PORT {port} is already in use"):
            check_web_port("127.0.0.1", port)
    check_web_port("127.0.0.1", port)  # released: free again


def test_broker_reachable_returns_at_once() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        wait_for_broker(f"127.0.0.1:1,127.0.0.1:{port}", 5.0)


def test_broker_unreachable_names_the_setting_after_the_wait() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again below: nothing listens there
    with pytest.raises(StartupError) as caught:
        wait_for_broker(f"127.0.0.1:{port}", 0.5)
    message = str(caught.value)
    assert message.startswith("BROKER_URL unreachable: ") and "\n" not in message
    assert f"127.0.0.1:{port}" in message and "BROKER_WAIT_SECONDS" in message
