"""Secrets services against the real database and the real vault: values go to the store,
metadata and audit rows to our tables, and nothing else ever holds a value."""

from __future__ import annotations

import base64
import json
import secrets

import pytest
import redis
from django.conf import settings

from config import task_names
from config.celery import app as celery_app
from config.errors import AppError, NotFound, PermanentError, ValidationFailed
from projects.specs import EnvVar
from secrets_meta import selectors, services
from secrets_meta.models import SecretAudit, SecretMeta, SecretValue
from secrets_meta.stores import get_store, project_scope

pytestmark = pytest.mark.django_db


def canary() -> str:
    return "canary-" + secrets.token_urlsafe(16)


def audit_of(project, key: str) -> list[str]:
    return list(
        SecretAudit.objects.filter(secret__project=project, secret__key=key)
        .order_by("id")
        .values_list("action", flat=True)
    )


def test_put_stores_the_value_in_the_vault_and_the_metadata_without_it(project):
    value = canary()

    meta = services.secret_put(project_id=project.id, key="API_KEY", value=value, actor="user:1")

    assert (meta.key, meta.kind, meta.filled, meta.length, meta.store) == ("API_KEY", "user", True, len(value), "vault")
    assert meta.synced_at is not None and meta.created_by == "user:1"
    assert get_store().get(project_scope(project.id), "API_KEY") == value
    assert audit_of(project, "API_KEY") == ["set"]
    row = SecretAudit.objects.get(secret=meta)
    assert value not in f"{row.action} {row.actor} {row.detail}"


def test_put_again_replaces_the_value_and_is_audited_as_updated(project):
    services.secret_put(project_id=project.id, key="API_KEY", value="first-value", actor="user:1")
    meta = services.secret_put(project_id=project.id, key="API_KEY", value="second-value!", actor="user:2")

    assert meta.length == len("second-value!")
    assert get_store().get(project_scope(project.id), "API_KEY") == "second-value!"
    assert audit_of(project, "API_KEY") == ["set", "updated"]
    assert SecretMeta.objects.filter(project=project).count() == 1
    assert SecretValue.objects.filter(scope=project_scope(project.id)).count() == 1


def test_put_enqueues_secrets_provided_once_committed(project, django_capture_on_commit_callbacks):
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.secret_put(project_id=project.id, key="API_KEY", value=canary(), actor="user:1")
    assert len(callbacks) == 1
    if not settings.REDIS_URL:
        return
    celery_app.set_current()  # the factory's app (another test may have made its own current)
    client = redis.Redis.from_url(settings.REDIS_URL)
    client.delete("maintenance")  # escalations.* are routed to the maintenance queue
    try:
        callbacks[0]()
        messages = [json.loads(raw) for raw in client.lrange("maintenance", 0, -1)]
    finally:
        client.delete("maintenance")
        client.close()
    sent = [m for m in messages if m["headers"]["task"] == task_names.SECRETS_PROVIDED]
    assert len(sent) == 1
    args, kwargs, _ = json.loads(base64.b64decode(sent[0]["body"]))
    assert (args, kwargs) == ([], {"project_id": project.id})


@pytest.mark.parametrize(
    ("key", "code"),
    [
        ("", "secret_name_invalid"),
        ("api_key", "secret_name_invalid"),
        ("1KEY", "secret_name_invalid"),
        ("API-KEY", "secret_name_invalid"),
        ("K" * 101, "secret_name_invalid"),
        ("PATH", "secret_name_reserved"),
    ],
)
def test_put_refuses_a_bad_name(project, key, code):
    with pytest.raises(ValidationFailed) as caught:
        services.secret_put(project_id=project.id, key=key, value="a-good-value", actor="user:1")
    assert caught.value.code == code
    assert not SecretMeta.objects.exists() and not SecretValue.objects.exists()


@pytest.mark.parametrize(
    ("value", "code"),
    [
        ("", "secret_value_empty"),
        ("   \n", "secret_value_empty"),
        ("x" * (64 * 1024 + 1), "secret_value_too_long"),
        ("before\x00after-the-nul", "secret_value_invalid"),
        ("lone \ud800 surrogate", "secret_value_invalid"),
        (12345678, "secret_value_invalid"),
    ],
)
def test_put_refuses_a_bad_value_without_repeating_it(project, value, code):
    with pytest.raises(ValidationFailed) as caught:
        services.secret_put(project_id=project.id, key="API_KEY", value=value, actor="user:1")
    assert caught.value.code == code
    assert "API_KEY" in caught.value.message
    if isinstance(value, str) and value.strip():
        assert value not in caught.value.message and value[:6] not in caught.value.message
    assert not SecretMeta.objects.exists() and not SecretValue.objects.exists()


def test_the_largest_value_is_accepted(project):
    meta = services.secret_put(project_id=project.id, key="BIG", value="v" * 64 * 1024, actor="user:1")
    assert meta.length == 64 * 1024


def test_put_for_a_project_that_does_not_exist_is_not_found(db):
    with pytest.raises(NotFound):
        services.secret_put(project_id=987654, key="API_KEY", value="a-good-value", actor="user:1")


def test_put_refuses_more_secrets_than_the_limit(project, monkeypatch):
    monkeypatch.setattr(services, "SECRETS_PER_PROJECT", 2)
    services.secret_put(project_id=project.id, key="ONE", value="value-one", actor="user:1")
    services.secret_put(project_id=project.id, key="TWO", value="value-two", actor="user:1")
    with pytest.raises(ValidationFailed) as caught:
        services.secret_put(project_id=project.id, key="THREE", value="value-three", actor="user:1")
    assert caught.value.code == "too_many_secrets"
    services.secret_put(project_id=project.id, key="TWO", value="value-two-again", actor="user:1")  # a replacement


def test_delete_forgets_the_value_keeps_the_row_and_is_idempotent(project):
    services.secret_put(project_id=project.id, key="API_KEY", value=canary(), actor="user:1")

    meta = services.secret_delete(project_id=project.id, key="API_KEY", actor="user:1")
    again = services.secret_delete(project_id=project.id, key="API_KEY", actor="user:1")

    assert (meta.filled, meta.length) == (False, 0) and not again.filled
    assert get_store().get(project_scope(project.id), "API_KEY") is None
    assert audit_of(project, "API_KEY") == ["set", "deleted"]
    assert selectors.secrets_missing(project_id=project.id) == ["API_KEY"]


def test_delete_of_an_unknown_secret_is_not_found(project):
    with pytest.raises(NotFound) as caught:
        services.secret_delete(project_id=project.id, key="NEVER_SET", actor="user:1")
    assert caught.value.code == "secret_not_found" and "NEVER_SET" in caught.value.message


def test_generate_makes_an_infra_secret_once(project):
    first = services.secret_generate(project_id=project.id, key="DB_PASSWORD")
    value = get_store().get(project_scope(project.id), "DB_PASSWORD")
    second = services.secret_generate(project_id=project.id, key="DB_PASSWORD")

    assert (first.kind, first.filled, first.created_by) == ("infra", True, "system")
    assert len(value) >= 40 and second.id == first.id
    assert get_store().get(project_scope(project.id), "DB_PASSWORD") == value
    assert audit_of(project, "DB_PASSWORD") == ["generated"]


def test_generate_again_when_the_store_lost_the_value(project):
    services.secret_generate(project_id=project.id, key="DB_PASSWORD")
    SecretValue.objects.all().delete()
    services.secret_generate(project_id=project.id, key="DB_PASSWORD")
    assert get_store().get(project_scope(project.id), "DB_PASSWORD")
    assert audit_of(project, "DB_PASSWORD") == ["generated", "generated"]


CONTRACT = [
    EnvVar(name="GREETING", source="literal", value="Hello"),
    EnvVar(name="APP_NAME", source="derived"),
    EnvVar(name="PUBLIC_URL", source="derived"),
    EnvVar(name="SESSION_KEY", source="generated_secret"),
    EnvVar(name="WEATHER_API_KEY", source="user_secret", description="from the weather service"),
]
COMPUTED = {"APP_NAME": "Greeter", "PUBLIC_URL": "http://127.0.0.1:20001", "PROJECT_SLUG": "greeter"}


def test_release_environment_lists_missing_user_secrets_and_makes_their_rows(project):
    env = services.release_environment(project_id=project.id, env=CONTRACT, computed=COMPUTED)

    assert env.missing == ["WEATHER_API_KEY"]
    assert env.values["GREETING"] == "Hello" and env.values["APP_NAME"] == "Greeter"
    assert env.values["PUBLIC_URL"] == "http://127.0.0.1:20001"
    assert len(env.values["SESSION_KEY"]) >= 40 and "WEATHER_API_KEY" not in env.values
    rows = {r["key"]: r for r in selectors.secret_rows(project_id=project.id)}
    assert set(rows) == {"SESSION_KEY", "WEATHER_API_KEY"}
    assert (rows["WEATHER_API_KEY"]["kind"], rows["WEATHER_API_KEY"]["filled"]) == ("user", False)
    assert (rows["SESSION_KEY"]["kind"], rows["SESSION_KEY"]["filled"]) == ("infra", True)
    assert selectors.secrets_missing(project_id=project.id) == ["WEATHER_API_KEY"]
    assert env.values["SESSION_KEY"] not in repr(env)


def test_release_environment_twice_gives_the_same_values(project):
    weather = canary()
    services.secret_put(project_id=project.id, key="WEATHER_API_KEY", value=weather, actor="user:1")

    first = services.release_environment(project_id=project.id, env=CONTRACT, computed=COMPUTED)
    second = services.release_environment(project_id=project.id, env=CONTRACT, computed=COMPUTED)

    assert first.missing == [] and first == second
    assert first.values["WEATHER_API_KEY"] == weather
    assert audit_of(project, "SESSION_KEY") == ["generated"]


def test_release_environment_includes_the_persons_other_secrets_and_skips_the_bot_token(project):
    services.secret_put(project_id=project.id, key="EXTRA_TOKEN", value="extra-value-1", actor="user:1")
    contract = [*CONTRACT[:1], EnvVar.model_construct(name="TELEGRAM_BOT_TOKEN", source="bot_token")]

    env = services.release_environment(project_id=project.id, env=contract, computed=COMPUTED)

    assert env.values == {"GREETING": "Hello", "EXTRA_TOKEN": "extra-value-1"}
    assert env.missing == []


def test_release_environment_refuses_a_derived_variable_nobody_computes(project):
    with pytest.raises(PermanentError) as caught:
        services.release_environment(
            project_id=project.id, env=[EnvVar(name="DATABASE_URL", source="derived")], computed=COMPUTED
        )
    assert caught.value.code == "derived_variable_unknown" and "DATABASE_URL" in caught.value.message


def test_release_environment_notices_a_value_the_store_lost(project):
    services.secret_put(project_id=project.id, key="WEATHER_API_KEY", value=canary(), actor="user:1")
    SecretValue.objects.all().delete()

    env = services.release_environment(project_id=project.id, env=CONTRACT, computed=COMPUTED)

    assert env.missing == ["WEATHER_API_KEY"]
    assert selectors.secrets_missing(project_id=project.id) == ["WEATHER_API_KEY"]


def test_errors_are_the_app_error_family(project):
    for call in (
        lambda: services.secret_put(project_id=project.id, key="bad", value="a-good-value", actor="x"),
        lambda: services.secret_delete(project_id=project.id, key="NOPE", actor="x"),
        lambda: services.secret_generate(project_id=project.id, key="lower"),
    ):
        with pytest.raises(AppError):
            call()


def test_secrets_of_a_project_are_listed_by_name_without_values(project, django_assert_num_queries):
    services.secret_put(project_id=project.id, key="B_KEY", value="value-of-b", actor="user:1")
    services.secret_put(project_id=project.id, key="A_KEY", value="value-of-a", actor="user:1")

    with django_assert_num_queries(1):
        rows = selectors.secret_rows(project_id=project.id)

    assert [r["key"] for r in rows] == ["A_KEY", "B_KEY"]
    assert set(rows[0]) == {"key", "kind", "filled", "length", "store", "updated_at"}
