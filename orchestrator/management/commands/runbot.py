"""``manage.py runbot``: the Telegram bot by long polling, with the same handlers as the webhook."""

from __future__ import annotations

import time

import structlog
from django.core.management.base import BaseCommand, CommandError
from django.db import close_old_connections, connection

from config.errors import AppError
from orchestrator.telegram import handlers as bot

log = structlog.get_logger(__name__)

MAX_BACKOFF_SECONDS = 30.0


class Command(BaseCommand):
    help = "Run the Telegram bot by long polling (getUpdates)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--once", action="store_true", help="poll once, handle what came, confirm it, and exit (for tests and cron)"
        )
        parser.add_argument("--timeout", type=int, default=25, help="long-polling timeout in seconds")
        parser.add_argument(
            "--delete-webhook",
            action="store_true",
            help="delete a webhook first (Telegram refuses getUpdates while one is set)",
        )
        parser.add_argument(
            "--set-webhook",
            metavar="URL",
            help="register URL (…/telegram/webhook/) as the webhook, with the secret, and exit",
        )

    def handle(self, *args, once: bool, timeout: int, delete_webhook: bool, set_webhook: str | None, **options):
        try:
            if set_webhook:
                bot.webhook_set(url=set_webhook)
                self.stdout.write(f"Webhook set to {set_webhook}.")
                return
            if delete_webhook:
                bot.webhook_delete()
        except AppError as exc:
            raise CommandError(exc.message) from exc
        if once:
            self._once(timeout)
        else:
            self._forever(timeout)

    def _once(self, timeout: int) -> None:
        try:
            offset, count = bot.poll(offset=None, timeout=timeout)
            if count and offset is not None:
                # Confirm what was handled, so the next run does not handle it again.
                bot.poll_confirm(offset=offset)
        except AppError as exc:
            raise CommandError(exc.message) from exc
        self.stdout.write(f"Handled {count} update(s).")

    def _forever(self, timeout: int) -> None:
        offset, backoff = None, 1.0
        log.info("bot_polling_started", timeout=timeout)
        while True:
            if not connection.in_atomic_block:
                close_old_connections()  # a long-lived process: drop connections that went stale
            try:
                offset, _ = bot.poll(offset=offset, timeout=timeout)
                backoff = 1.0
            except bot.PollFailed as exc:
                if exc.fatal:
                    raise CommandError(exc.message) from exc
                log.warning("bot_poll_failed", reason=exc.message, retry_in=backoff)
                time.sleep(backoff)  # a management command, not a task: waiting here is the job
                backoff = min(backoff * 2, MAX_BACKOFF_SECONDS)
            except AppError as exc:
                raise CommandError(exc.message) from exc
