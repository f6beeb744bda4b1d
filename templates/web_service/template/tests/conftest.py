"""Fixtures: a real server on a free port, and a small JSON client that talks to it."""
from __future__ import annotations

import threading
import urllib.error
import urllib.request
from json import dumps, loads
from typing import Any, Iterator, Optional

import pytest

from app import make_server


class Client:
    """Speaks HTTP to the running server; every call returns (status, parsed JSON body)."""

    def __init__(self, base_url: str) -> None:
        self.base_url = base_url

    def get(self, path: str) -> tuple[int, Any]:
        return self.request("GET", path)

    def post(self, path: str, json: Any = None) -> tuple[int, Any]:
        return self.request("POST", path, json=json)

    def request(
        self, method: str, path: str, json: Any = None, data: Optional[bytes] = None
    ) -> tuple[int, Any]:
        """Send `json` (or raw `data`) and parse the answer, whatever its status."""
        if json is not None:
            data = dumps(json).encode()
        headers = {"Content-Type": "application/json"} if data is not None else {}
        req = urllib.request.Request(self.base_url + path, data=data, method=method,
                                     headers=headers)
        try:
            with urllib.request.urlopen(req, timeout=10) as response:
                return response.status, loads(response.read() or b"null")
        except urllib.error.HTTPError as error:
            with error:
                return error.code, loads(error.read() or b"null")


@pytest.fixture
def client() -> Iterator[Client]:
    """Start the app on 127.0.0.1 and a free port in a thread; stop it after the test."""
    server = make_server("127.0.0.1", 0)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    try:
        yield Client(f"http://127.0.0.1:{server.server_port}")
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
