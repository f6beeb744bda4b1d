"""The built-in routes every service has."""
from __future__ import annotations


def test_health_answers_ok_with_the_release(client):
    status, body = client.get("/health")
    assert status == 200
    assert body["status"] == "ok"
    assert isinstance(body["release"], str) and body["release"]


def test_unknown_path_is_a_json_404(client):
    assert client.get("/no-such-path") == (404, {"error": "not found"})


def test_unknown_path_is_a_json_404_for_post_too(client):
    assert client.post("/no-such-path", json={"a": 1}) == (404, {"error": "not found"})
