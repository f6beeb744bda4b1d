"""Feature routes: ROUTES maps (method, path) to a handler; app.py serves them.

A handler takes an app.Request (request.query: dict of str, request.json: the parsed JSON body
or None) and returns (status, body), where body is anything json.dumps accepts. For example:

    def greet(request: Request) -> tuple[int, Any]:
        return 200, {"message": f"Hello, {request.query.get('name', 'world')}!"}

    ROUTES = {("GET", "/greet"): greet}

An exception in a handler is answered with 500 {"error": "internal error"}.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:
    from app import Request

ROUTES: dict[tuple[str, str], Callable[[Request], tuple[int, Any]]] = {}
