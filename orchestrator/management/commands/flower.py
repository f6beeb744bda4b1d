"""``manage.py flower``: Celery's Flower, always behind basic auth in production.

Runs ``celery -A config flower`` with ``--basic-auth`` from FLOWER_BASIC_AUTH (``user:password``,
comma-separated for several), on FLOWER_ADDRESS:FLOWER_PORT (loopback by default: reach it through
Caddy at flower.<BASE_DOMAIN>, or a tunnel). With PRODUCTION=true and no credentials it refuses to
start: anyone who can reach an open Flower can inspect and revoke tasks.
"""

from __future__ import annotations

import os
import re
import sys

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError

CREDENTIAL = re.compile(r"^[^:,\s]+:[^,\s]+$")


def flower_argv(*, auth: str, address: str, port: int, production: bool) -> list[str]:
    """Flower's command line. The credentials are not on it (a process listing would show them):
    Flower reads FLOWER_BASIC_AUTH from its environment itself."""
    argv = [sys.executable, "-m", "celery", "-A", "config", "flower", f"--address={address}", f"--port={port}"]
    if auth:
        if not all(CREDENTIAL.match(pair) for pair in auth.split(",")):
            raise CommandError("FLOWER_BASIC_AUTH must be user:password (comma-separated for several), no spaces.")
    elif production:
        raise CommandError(
            "Refusing to start Flower without authentication in production: set FLOWER_BASIC_AUTH=user:password "
            "(scripts/server-init generates one)."
        )
    return argv


class Command(BaseCommand):
    help = "Run Flower (Celery monitoring) with basic auth from FLOWER_BASIC_AUTH."

    def handle(self, *args, **options):
        argv = flower_argv(
            auth=settings.FLOWER_BASIC_AUTH,
            address=settings.FLOWER_ADDRESS,
            port=settings.FLOWER_PORT,
            production=settings.PRODUCTION,
        )
        if not settings.FLOWER_BASIC_AUTH:
            self.stderr.write("Flower runs without authentication (not production): anyone who reaches it can act.")
        env = {**os.environ, "FLOWER_BASIC_AUTH": settings.FLOWER_BASIC_AUTH}
        if not settings.FLOWER_BASIC_AUTH:
            env.pop("FLOWER_BASIC_AUTH")
        os.execve(argv[0], argv, env)
