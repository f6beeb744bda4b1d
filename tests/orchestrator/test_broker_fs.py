"""The embedded default's broker: a message is in the queue folder only once it is whole."""

from __future__ import annotations

import multiprocessing
import threading
from queue import Empty

import pytest
from django.conf import settings
from kombu import Connection

from orchestrator import broker_fs


def _connection(folder) -> Connection:
    return Connection(
        "filesystem://",
        transport="orchestrator.broker_fs:Transport",
        transport_options={
            "data_folder_in": str(folder),
            "data_folder_out": str(folder),
            "control_folder": str(folder) + "-control",
            "polling_interval": 0.001,
        },
    )


def _write(folder, i: int, count: int, payload: str) -> None:
    with _connection(folder) as conn, conn.SimpleQueue("pipeline") as q:
        for j in range(count):
            q.put({"i": i, "j": j, "body": payload})


def test_the_embedded_default_uses_this_transport():
    if settings.CELERY_BROKER_URL.startswith("filesystem://"):
        assert settings.CELERY_BROKER_TRANSPORT == "orchestrator.broker_fs:Transport"
    conn = _connection("/nonexistent")
    assert conn.transport_cls == "orchestrator.broker_fs:Transport"
    assert isinstance(conn.transport, broker_fs.Transport)


def test_a_reader_in_the_middle_of_a_write_sees_nothing_then_the_whole_message(tmp_path, monkeypatch):
    tmp_path = tmp_path / "queue"
    tmp_path.mkdir()
    seen_mid_write = []
    real_replace = broker_fs.os.replace

    with _connection(tmp_path) as conn:
        channel = conn.default_channel

        def replace(src, dst):
            # The payload is written, not yet in place: a polling worker finds no message.
            with pytest.raises(Empty):
                channel._get("pipeline")
            seen_mid_write.append(sorted(p.name for p in tmp_path.iterdir()))
            real_replace(src, dst)

        monkeypatch.setattr(broker_fs.os, "replace", replace)
        channel._put("pipeline", {"body": "x" * 100_000})
        monkeypatch.setattr(broker_fs.os, "replace", real_replace)
        assert len(seen_mid_write) == 1 and seen_mid_write[0][0].endswith(".pipeline.msg.part")
        assert channel._get("pipeline") == {"body": "x" * 100_000}
        assert list(tmp_path.iterdir()) == []


def test_many_writers_and_a_polling_reader_lose_and_garble_nothing(tmp_path):
    tmp_path = tmp_path / "queue"
    tmp_path.mkdir()
    payload = "y" * 2_000_000  # large enough that a write takes a while
    n_writers, per_writer = 4, 25
    got, errors = [], []

    def read():
        with _connection(tmp_path) as conn, conn.SimpleQueue("pipeline") as q:
            while len(got) < n_writers * per_writer:
                try:
                    message = q.get(timeout=10)
                except q.Empty:
                    return
                except Exception as exc:  # a garbled message: what the stock transport let through
                    errors.append(exc)
                    continue
                message.ack()
                got.append((message.payload["i"], message.payload["j"], len(message.payload["body"])))

    reader = threading.Thread(target=read)
    reader.start()
    # Writers in other processes, as the web process and the worker's pool are.
    spawn = multiprocessing.get_context("spawn")
    writers = [spawn.Process(target=_write, args=(tmp_path, i, per_writer, payload)) for i in range(n_writers)]
    for p in writers:
        p.start()
    for p in writers:
        p.join(60)
        assert p.exitcode == 0
    reader.join(60)
    assert errors == []
    assert sorted(got) == sorted((i, j, len(payload)) for i in range(n_writers) for j in range(per_writer))
