"""How app.py treats handlers: errors become JSON answers, never a dead server."""
from __future__ import annotations

import handlers


def _boom(request):
    raise RuntimeError("handler bug")


def _echo_json(request):
    return 200, {"json": request.json, "query": request.query}


def test_handler_exception_is_a_500_and_the_server_keeps_serving(client, monkeypatch):
    monkeypatch.setitem(handlers.ROUTES, ("GET", "/boom"), _boom)
    assert client.get("/boom") == (500, {"error": "internal error"})
    assert client.get("/health")[0] == 200


def test_handler_gets_query_and_json_body(client, monkeypatch):
    monkeypatch.setitem(handlers.ROUTES, ("POST", "/inspect"), _echo_json)
    status, body = client.post("/inspect?x=1&name=Ada%20L", json={"a": [1, 2]})
    assert status == 200
    assert body == {"json": {"a": [1, 2]}, "query": {"x": "1", "name": "Ada L"}}


def test_invalid_json_body_is_a_400(client, monkeypatch):
    monkeypatch.setitem(handlers.ROUTES, ("POST", "/inspect"), _echo_json)
    status, body = client.request("POST", "/inspect", data=b"{not json")
    assert status == 400
    assert "JSON" in body["error"]


def test_known_path_with_wrong_method_is_a_405(client, monkeypatch):
    monkeypatch.setitem(handlers.ROUTES, ("POST", "/inspect"), _echo_json)
    assert client.get("/inspect") == (405, {"error": "method not allowed"})
