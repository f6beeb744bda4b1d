"""The vault store: Fernet at rest, keys from SECRETS_ENCRYPTION_KEY or a 0600 key file,
rotation with two keys (and ``manage.py secrets_rotate``), clear errors without values."""

from __future__ import annotations

import io
import secrets
import stat

import pytest
from cryptography.fernet import Fernet, InvalidToken
from django.core.exceptions import ImproperlyConfigured
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import connection

from secrets_meta import services
from secrets_meta.models import SecretValue
from secrets_meta.stores import SecretStoreError, VaultStore, get_store, project_scope

pytestmark = pytest.mark.django_db


@pytest.fixture
def key_file(settings, tmp_path):
    settings.SECRETS_ENCRYPTION_KEY = ""
    settings.SECRETS_KEY_FILE = tmp_path / "keys" / "secrets.key"
    return settings.SECRETS_KEY_FILE


def test_the_ciphertext_in_the_database_does_not_hold_the_value(project):
    value = "canary-" + secrets.token_urlsafe(24)
    services.secret_put(project_id=project.id, key="API_KEY", value=value, actor="user:1")

    with connection.cursor() as cursor:
        cursor.execute("SELECT ciphertext FROM secrets_meta_secretvalue")
        stored = [row[0] for row in cursor.fetchall()]
    assert len(stored) == 1 and value not in stored[0] and value.encode().hex() not in stored[0]


def test_the_embedded_default_creates_a_key_file_with_mode_0600_once(key_file, project):
    assert not key_file.exists()
    store = get_store()
    store.put(project_scope(project.id), "API_KEY", "a-value-to-keep")

    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    first = key_file.read_bytes()
    assert get_store().get(project_scope(project.id), "API_KEY") == "a-value-to-keep"
    assert key_file.read_bytes() == first  # the same key, not a new one


def test_a_key_from_the_environment_is_used_and_no_file_is_made(settings, key_file, project):
    key = Fernet.generate_key().decode()
    settings.SECRETS_ENCRYPTION_KEY = key
    get_store().put(project_scope(project.id), "API_KEY", "a-value-to-keep")

    assert not key_file.exists()
    assert VaultStore([key.encode()]).get(project_scope(project.id), "API_KEY") == "a-value-to-keep"


def test_a_malformed_key_is_refused_without_showing_it(settings, project):
    settings.SECRETS_ENCRYPTION_KEY = "not-a-fernet-key-at-all"
    with pytest.raises(ImproperlyConfigured) as caught:
        get_store().put(project_scope(project.id), "API_KEY", "a-value")
    assert "not-a-fernet-key-at-all" not in str(caught.value)


def test_a_wrong_key_gives_a_clear_error_without_the_value(project):
    value = "canary-" + secrets.token_urlsafe(24)
    VaultStore([Fernet.generate_key()]).put(project_scope(project.id), "API_KEY", value)

    with pytest.raises(SecretStoreError) as caught:
        VaultStore([Fernet.generate_key()]).get(project_scope(project.id), "API_KEY")

    message = str(caught.value)
    assert "API_KEY" in message and "SECRETS_ENCRYPTION_KEY" in message
    assert value not in message and value not in repr(caught.value.extra)
    assert caught.value.__cause__ is None  # nothing chained that could carry more


def test_rotation_with_two_keys_re_encrypts_every_value_under_the_new_one(settings, project):
    old, new = Fernet.generate_key(), Fernet.generate_key()
    settings.SECRETS_ENCRYPTION_KEY = old.decode()
    services.secret_put(project_id=project.id, key="ONE", value="value-number-one", actor="user:1")
    services.secret_put(project_id=project.id, key="TWO", value="value-number-two", actor="user:1")
    settings.SECRETS_ENCRYPTION_KEY = f"{new.decode()},{old.decode()}"
    assert get_store().get(project_scope(project.id), "ONE") == "value-number-one"  # old rows still read

    out = io.StringIO()
    call_command("secrets_rotate", stdout=out)

    assert "Re-encrypted 2 secret value(s)" in out.getvalue()
    only_new = VaultStore([new])
    assert only_new.get(project_scope(project.id), "ONE") == "value-number-one"
    assert only_new.get(project_scope(project.id), "TWO") == "value-number-two"
    for row in SecretValue.objects.all():
        with pytest.raises(InvalidToken):  # the old key alone no longer reads it
            Fernet(old).decrypt(row.ciphertext.encode())


def test_rotation_without_the_old_key_fails_naming_the_secret(settings, project):
    settings.SECRETS_ENCRYPTION_KEY = Fernet.generate_key().decode()
    services.secret_put(project_id=project.id, key="ONE", value="value-number-one", actor="user:1")
    settings.SECRETS_ENCRYPTION_KEY = Fernet.generate_key().decode()

    with pytest.raises(CommandError) as caught:
        call_command("secrets_rotate", stdout=io.StringIO())

    assert "ONE" in str(caught.value) and "value-number-one" not in str(caught.value)


def test_generate_key_prints_a_fresh_fernet_key():
    out = io.StringIO()
    call_command("secrets_rotate", "--generate-key", stdout=out)
    key = out.getvalue().strip()
    Fernet(key.encode())  # a valid key
    assert len(key) == 44
