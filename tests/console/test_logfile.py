"""config.logfile: a run's lines from the JSON log file, its rotated predecessor included."""

from __future__ import annotations

import json

from config import logfile


def write(path, lines):
    path.write_text("".join((json.dumps(line) if isinstance(line, dict) else line) + "\n" for line in lines))


def test_a_runs_lines_are_found_in_the_file_and_the_rotated_one_oldest_first(tmp_path):
    current = tmp_path / "factory.jsonl"
    write(current.with_name("factory.jsonl.1"), [{"event": "a", "run_id": 5}, {"event": "x", "run_id": 50}])
    write(
        current,
        [
            'not json at all, "run_id": 5',
            {"event": "b", "run_id": 5, "stage": "tester"},
            {"event": "c", "run_id": "5"},  # bound as a string by someone
            {"event": "d", "run_id": 6},
        ],
    )

    found = logfile.run_lines(5, path=str(current))

    assert [line["event"] for line in found] == ["a", "b", "c"]
    assert logfile.run_lines(5, path=str(current), limit=2)[0]["event"] == "b"
    assert logfile.run_lines(7, path=str(current)) == []


def test_only_the_tail_of_a_large_file_is_read(tmp_path, monkeypatch):
    current = tmp_path / "factory.jsonl"
    write(
        current,
        [{"event": "old", "run_id": 9}]
        + [{"event": "filler", "n": i} for i in range(2000)]
        + [{"event": "new", "run_id": 9}],
    )
    monkeypatch.setattr(logfile, "SCAN_BYTES", 4096)

    assert [line["event"] for line in logfile.run_lines(9, path=str(current))] == ["new"]


def test_no_file_configured_or_none_written_yet_finds_nothing(tmp_path, settings):
    settings.LOG_FILE = ""
    assert logfile.run_lines(1) == []
    assert logfile.run_lines(1, path=str(tmp_path / "missing.jsonl")) == []
