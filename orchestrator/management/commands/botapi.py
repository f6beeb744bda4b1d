"""``manage.py botapi``: the loopback Bot API stand-in in the foreground, for the demo and people.

It serves the Bot API wire format for the bots it creates (``--bots N``, or ``--token`` to serve
given tokens) and prints TELEGRAM_API_URL and each bot's username. The tokens are printed only
with ``--show-tokens`` (they are stand-in tokens, worth nothing outside this process). Ctrl-C stops it.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand

from orchestrator.telegram.standin import StandIn


class Command(BaseCommand):
    help = "Run the loopback Telegram Bot API stand-in in the foreground."

    def add_arguments(self, parser):
        parser.add_argument("--host", default="127.0.0.1")
        parser.add_argument("--port", type=int, default=8081)
        parser.add_argument("--bots", type=int, default=1, help="how many bots to create (default 1)")
        parser.add_argument("--token", action="append", default=[], help="also serve this token (repeatable)")
        parser.add_argument("--show-tokens", action="store_true", help="print the created bots' tokens")

    def handle(self, *args, host: str, port: int, bots: int, token: list[str], show_tokens: bool, **options):
        standin = StandIn(host=host, port=port)
        served = [standin.add_bot() for _ in range(max(0, bots))]
        served += [standin.add_bot(token=t) for t in token]
        self.stdout.write(f"Bot API stand-in at {standin.base_url}")
        self.stdout.write(f"TELEGRAM_API_URL={standin.api_url}")
        for t in served:
            line = f"bot @{standin.bot(t)['username']}"
            self.stdout.write(f"{line} token {t}" if show_tokens else line)
        self.stdout.flush()
        try:
            standin.serve_forever()
        except KeyboardInterrupt:
            self.stdout.write("Stopped.")
        finally:
            standin.httpd.server_close()
