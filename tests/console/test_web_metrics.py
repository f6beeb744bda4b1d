"""The web app's own metrics (factory_http_*): counted per answer, and added up across
gunicorn's worker processes through PROMETHEUS_MULTIPROC_DIR."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from tests.caddy_server import free_port
from tests.conftest import ROOT, child_env

TOKEN = "web-metrics-token-0123"


def samples(text: str, name: str, **labels) -> list[float]:
    return [
        s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    ]


@pytest.mark.django_db
def test_each_answer_is_counted_by_view_method_and_status(client, settings):
    settings.METRICS_TOKEN = TOKEN
    scrape = lambda: client.get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").content.decode()  # noqa: E731
    before = scrape()

    def count(text: str, **labels) -> float:
        return sum(samples(text, "factory_http_requests_total", **labels))

    for _ in range(3):
        assert client.get("/favicon.ico").status_code == 200
    assert client.post("/favicon.ico").status_code == 405
    assert client.get("/no-such-page/").status_code == 404
    after = scrape()

    assert (
        count(after, view="favicon", method="GET", status="2xx")
        == count(before, view="favicon", method="GET", status="2xx") + 3
    )
    assert (
        count(after, view="favicon", method="POST", status="4xx")
        == count(before, view="favicon", method="POST", status="4xx") + 1
    )
    assert count(after, view="unmatched", status="4xx") == count(before, view="unmatched", status="4xx") + 1
    buckets = samples(after, "factory_http_request_duration_seconds_count", view="favicon")
    assert buckets and buckets[0] >= 4


@pytest.mark.e2e
def test_gunicorns_workers_add_up(transactional_db, tmp_path):
    """Two worker processes answer; every scrape, whichever answers it, reports all requests."""
    port, shared = free_port(), tmp_path / "prometheus"
    env = child_env(METRICS_TOKEN=TOKEN, PROMETHEUS_MULTIPROC_DIR=str(shared))
    log = tmp_path / "gunicorn.log"
    with open(log, "wb") as out:
        server = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "gunicorn",
                "-c",
                "config/gunicorn.py",
                "--workers",
                "2",
                "--bind",
                f"127.0.0.1:{port}",
                "config.wsgi",
            ],
            cwd=ROOT,
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                requests.get(f"{base}/favicon.ico", timeout=2)
                break
            except requests.ConnectionError:
                assert server.poll() is None and time.monotonic() < deadline, log.read_text(errors="replace")[-3000:]
                time.sleep(0.3)
        sent = 1
        # New connections until both workers have answered some (each writes its own file).
        while len(list(shared.glob("counter_*.db"))) < 2:
            assert sent < 400, f"one worker answered every request: {list(shared.iterdir())}"
            requests.get(f"{base}/favicon.ico", timeout=5, headers={"Connection": "close"})
            sent += 1
        for _ in range(6):  # the scrapes themselves land on either worker
            text = requests.get(
                f"{base}/metrics", headers={"Authorization": f"Bearer {TOKEN}", "Connection": "close"}, timeout=10
            ).text
            assert sum(samples(text, "factory_http_requests_total", view="favicon", method="GET")) == sent
            assert samples(text, "factory_runs", status="running", kind="create") == [0.0]
    finally:
        server.terminate()
        server.wait(20)
