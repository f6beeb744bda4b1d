"""``manage.py bots add TOKEN…`` / ``manage.py bots list``: the bot pool from a shell.

Each token is validated (format → getMe → webhook → polled elsewhere → in use here) and added as
a free pool bot; the outcome is reported by the bot's @username or by the reason it was refused,
never by echoing the token. ``-`` reads tokens from standard input, one a line (so they stay out
of the shell's history and the process list).
"""

from __future__ import annotations

import sys

from django.core.management.base import BaseCommand, CommandError

from config.errors import AppError
from orchestrator import bots
from secrets_meta.models import BotToken


class Command(BaseCommand):
    help = "Add Telegram bot tokens to the factory's pool (validated), or list the pool."

    def add_arguments(self, parser):
        sub = parser.add_subparsers(dest="action", required=True)
        add = sub.add_parser("add", help="validate tokens and add their bots to the pool")
        add.add_argument("tokens", nargs="+", metavar="TOKEN", help="bot tokens from @BotFather; - reads stdin")
        sub.add_parser("list", help="the pool: each bot's status, source, project and last check")

    def handle(self, *args, action: str, **options):
        if action == "list":
            return self._list()
        return self._add(options["tokens"])

    def _add(self, given: list[str]) -> None:
        tokens: list[str] = []
        for item in given:
            if item == "-":
                tokens += [line.strip() for line in sys.stdin if line.strip()]
            else:
                tokens.append(item)
        added = 0
        for number, token in enumerate(tokens, start=1):
            try:
                row = bots.pool_add(token, actor="cli")
            except AppError as exc:
                self.stdout.write(f"token {number}: refused ({exc.code}): {exc.message}")
                continue
            added += 1
            self.stdout.write(f"token {number}: @{row.username} added to the pool (bot #{row.id}, {row.status})")
        self.stdout.write(f"{added} of {len(tokens)} token(s) added.")
        if tokens and not added:
            raise CommandError("No token was added.")

    def _list(self) -> None:
        rows = BotToken.objects.select_related("project").order_by("id")
        if not rows:
            self.stdout.write("The pool is empty. Add bots with: manage.py bots add TOKEN…")
            return
        for row in rows:
            project = f"project #{row.project_id}" if row.project_id else "-"
            checked = row.last_validated_at.strftime("%Y-%m-%d %H:%M") if row.last_validated_at else "never"
            line = f"#{row.id} @{row.username} {row.status} ({row.source}) {project}, checked {checked}"
            if row.last_error:
                line += f"; last error: {row.last_error}"
            self.stdout.write(line)
