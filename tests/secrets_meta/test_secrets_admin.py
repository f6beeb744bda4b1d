"""The secrets admin: metadata shown, a write-only value field that goes through the services,
the audit read-only; a value never appears in any page."""

from __future__ import annotations

import secrets

import pytest
from django.urls import reverse

from secrets_meta import services
from secrets_meta.models import SecretAudit, SecretMeta
from secrets_meta.stores import get_store, project_scope

pytestmark = pytest.mark.django_db


def canary() -> str:
    return "canary-" + secrets.token_urlsafe(18)


def test_adding_a_secret_stores_its_value_through_the_service(admin_client, admin_user, project):
    value = canary()

    response = admin_client.post(
        reverse("admin:secrets_meta_secretmeta_add"),
        {"project": project.id, "key": "API_KEY", "kind": "user", "value": value},
    )

    assert response.status_code == 302, response.content.decode()[:2000]
    meta = SecretMeta.objects.get(project=project, key="API_KEY")
    assert (meta.filled, meta.length) == (True, len(value))
    assert get_store().get(project_scope(project.id), "API_KEY") == value
    assert SecretAudit.objects.get(secret=meta).actor == f"user:{admin_user.id}"


def test_the_change_page_never_shows_the_value_and_a_new_one_replaces_it(admin_client, project):
    value = canary()
    meta = services.secret_put(project_id=project.id, key="API_KEY", value=value, actor="user:1")
    url = reverse("admin:secrets_meta_secretmeta_change", args=[meta.id])

    page = admin_client.get(url)
    listing = admin_client.get(reverse("admin:secrets_meta_secretmeta_changelist"))
    audit = admin_client.get(reverse("admin:secrets_meta_secretaudit_changelist"))

    for response in (page, listing, audit):
        assert response.status_code == 200 and value not in response.content.decode()
    assert 'type="password"' in page.content.decode()

    replaced = admin_client.post(url, {"value": "a-brand-new-value"})
    assert replaced.status_code == 302
    assert get_store().get(project_scope(project.id), "API_KEY") == "a-brand-new-value"

    unchanged = admin_client.post(url, {"value": ""})  # empty: keeps the stored value
    assert unchanged.status_code == 302
    assert get_store().get(project_scope(project.id), "API_KEY") == "a-brand-new-value"
    assert list(SecretAudit.objects.filter(secret=meta).order_by("id").values_list("action", flat=True)) == [
        "set",
        "updated",
    ]


def test_a_bad_name_or_value_is_refused_in_the_form(admin_client, project):
    add = reverse("admin:secrets_meta_secretmeta_add")
    bad_name = admin_client.post(add, {"project": project.id, "key": "api_key", "kind": "user", "value": "a-value"})
    no_value = admin_client.post(add, {"project": project.id, "key": "API_KEY", "kind": "user", "value": ""})

    assert bad_name.status_code == 200 and "upper case letters" in bad_name.content.decode()
    assert no_value.status_code == 200 and "needs a value" in no_value.content.decode()
    assert not SecretMeta.objects.exists()


def test_forget_action_deletes_values_through_the_service(admin_client, project):
    meta = services.secret_put(project_id=project.id, key="API_KEY", value=canary(), actor="user:1")

    response = admin_client.post(
        reverse("admin:secrets_meta_secretmeta_changelist"),
        {"action": "forget_values", "_selected_action": [meta.id]},
    )

    assert response.status_code == 302
    meta.refresh_from_db()
    assert not meta.filled and get_store().get(project_scope(project.id), "API_KEY") is None


def test_the_audit_is_read_only(admin_client, project):
    meta = services.secret_put(project_id=project.id, key="API_KEY", value=canary(), actor="user:1")
    row = SecretAudit.objects.get(secret=meta)

    assert admin_client.get(reverse("admin:secrets_meta_secretaudit_add")).status_code == 403
    assert (
        admin_client.post(reverse("admin:secrets_meta_secretaudit_delete", args=[row.id]), {"post": "yes"}).status_code
        == 403
    )
    assert SecretAudit.objects.filter(id=row.id).exists()
