"""``manage.py secrets_rotate``: re-encrypt every stored secret under the newest vault key.

Rotation: generate a key (``--generate-key``), set ``SECRETS_ENCRYPTION_KEY="NEW,OLD"`` (newest
first: the first key encrypts, every key decrypts), run this command, then drop OLD.
"""

from __future__ import annotations

from cryptography.fernet import Fernet
from django.core.exceptions import ImproperlyConfigured
from django.core.management.base import BaseCommand, CommandError

from config.errors import AppError
from secrets_meta import services


class Command(BaseCommand):
    help = "Re-encrypt every stored secret under the newest key of SECRETS_ENCRYPTION_KEY (NEW,OLD)."

    def add_arguments(self, parser):
        parser.add_argument(
            "--generate-key", action="store_true", help="print a fresh key for SECRETS_ENCRYPTION_KEY and stop"
        )

    def handle(self, *args, generate_key: bool = False, **options):
        if generate_key:
            self.stdout.write(Fernet.generate_key().decode())
            return
        try:
            count = services.secrets_rotate()
        except (AppError, ImproperlyConfigured) as exc:
            raise CommandError(getattr(exc, "message", str(exc))) from None
        self.stdout.write(f"Re-encrypted {count} secret value(s) under the newest key.")
