"""A tiny JSON web service on the standard library: the router, /health, and the entry point.

Feature routes live in handlers.py as ROUTES = {(method, path): handler}. A handler takes a
Request and returns (status, body), where body is anything json.dumps accepts. Environment:
PORT (required), HOST (default 127.0.0.1), RELEASE (default "dev", reported by /health).
"""
from __future__ import annotations

import json
import os
import signal
import sys
import threading
import traceback
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Mapping, Optional
from urllib.parse import parse_qsl, urlsplit

import handlers

MAX_BODY_BYTES = 1024 * 1024

Response = tuple[int, Any]
Routes = Mapping[tuple[str, str], Callable[["Request"], Response]]


class BadRequest(Exception):
    """The request body cannot be handed to a handler; answered with `status`."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Request:
    """What a handler sees: the query as a dict (last value wins) and the parsed JSON body."""

    method: str
    path: str
    query: dict[str, str] = field(default_factory=dict)
    json: Any = None
    headers: Mapping[str, str] = field(default_factory=dict)


class Server(ThreadingHTTPServer):
    """A threading HTTP server that knows its routes and release."""

    daemon_threads = True

    def __init__(self, address: tuple[str, int], routes: Routes, release: str) -> None:
        super().__init__(address, RequestHandler)
        self.routes = routes
        self.release = release


class RequestHandler(BaseHTTPRequestHandler):
    """Parses the request, dispatches it, and always answers with JSON."""

    server: Server
    server_version = "factory-web-service"

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_PUT(self) -> None:
        self._dispatch("PUT")

    def do_PATCH(self) -> None:
        self._dispatch("PATCH")

    def do_DELETE(self) -> None:
        self._dispatch("DELETE")

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        if method == "GET" and url.path == "/health":
            self._send(200, {"status": "ok", "release": self.server.release})
            return
        handler = self.server.routes.get((method, url.path))
        if handler is None:
            if any(path == url.path for _, path in self.server.routes):
                self._send(405, {"error": "method not allowed"})
            else:
                self._send(404, {"error": "not found"})
            return
        try:
            body = self._read_json()
        except BadRequest as exc:
            self._send(exc.status, {"error": str(exc)})
            return
        request = Request(
            method=method,
            path=url.path,
            query=dict(parse_qsl(url.query, keep_blank_values=True)),
            json=body,
            headers=dict(self.headers.items()),
        )
        try:
            status, payload = handler(request)
            status = int(status)
            encoded = json.dumps(payload).encode()
        except Exception:  # a handler bug must cost one request, never the server
            traceback.print_exc(file=sys.stderr)
            self._send(500, {"error": "internal error"})
            return
        self._send_bytes(status, encoded)

    def _read_json(self) -> Any:
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            raise BadRequest(400, "invalid Content-Length") from None
        if length > MAX_BODY_BYTES:
            raise BadRequest(413, f"body larger than {MAX_BODY_BYTES} bytes")
        if length <= 0:
            return None
        raw = self.rfile.read(length)
        try:
            return json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise BadRequest(400, f"body is not valid JSON: {exc}") from None

    def _send(self, status: int, payload: Any) -> None:
        self._send_bytes(status, json.dumps(payload).encode())

    def _send_bytes(self, status: int, data: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


def make_server(host: str, port: int, routes: Optional[Routes] = None) -> Server:
    """Bind a server (port 0 picks a free port; see server.server_port) without starting it."""
    release = os.environ.get("RELEASE", "dev")
    return Server((host, port), handlers.ROUTES if routes is None else routes, release)


def main() -> int:
    """Serve until SIGTERM or SIGINT, then exit 0."""
    host = os.environ.get("HOST", "127.0.0.1")
    try:
        port = int(os.environ["PORT"])
    except (KeyError, ValueError):
        print("PORT must be set to a port number", file=sys.stderr)
        return 2
    server = make_server(host, port)

    def stop(signum: int, frame: object) -> None:
        # shutdown() waits for serve_forever() to return, so it cannot run on this thread.
        threading.Thread(target=server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    print(f"listening on http://{host}:{server.server_port} (release {server.release})",
          file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    finally:
        server.server_close()
    print("stopped", file=sys.stderr, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
