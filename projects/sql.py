"""Hand-written PostgreSQL statements, run prepared.

The run state machine's hot path (a claim, a stage's success) and the API's hottest reads are
single statements written here and in their modules for PostgreSQL; other databases (the
embedded SQLite) take the ORM path beside each. They run through Django's cursor wrapper, so
they are counted, logged and take part in transactions like any query, but with the parameters
bound by the server and the statement prepared once per connection: PostgreSQL then stops
parsing and planning it for every task or request (Django's own cursors bind parameters on the
client, which never prepares).
"""

from __future__ import annotations

import psycopg
from django.db import connection


def postgresql() -> bool:
    return connection.vendor == "postgresql"


class _PreparingCursor(psycopg.Cursor):
    """Binds parameters on the server and prepares each statement once per connection."""

    def execute(self, query, params=None, *, prepare=None, binary=None):
        super().execute(query, params, prepare=True if prepare is None else prepare, binary=binary)
        if self._query is None:  # a prepared statement's run keeps no text: Django's query log reads it
            self._query = self._convert_query(query, params)
        return self


def fetchone_prepared(sql: str, params) -> tuple | None:
    """Run ``sql`` (``%s`` or ``%(name)s`` placeholders) prepared; its first row, or None."""
    with connection.cursor() as cursor:
        client = cursor.cursor
        if client.connection.prepare_threshold is None:
            # Django turns psycopg's automatic preparing off; then only these explicit ones
            # happen (its own client-side cursors never prepare).
            client.connection.prepare_threshold = 2**31 - 1
        cursor.cursor = _PreparingCursor(client.connection)
        try:
            cursor.execute(sql, params)
            return cursor.fetchone() if cursor.description else None
        finally:
            cursor.cursor.close()
            cursor.cursor = client
