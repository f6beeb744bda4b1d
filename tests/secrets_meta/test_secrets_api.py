"""The secrets API: metadata out, values in, owner-scoped; no response ever holds a value."""

from __future__ import annotations

import secrets

import pytest

from secrets_meta import services
from secrets_meta.models import SecretAudit, SecretMeta
from secrets_meta.stores import get_store, project_scope
from tests.conftest import client_for

pytestmark = pytest.mark.django_db


def url(project, name: str | None = None) -> str:
    base = f"/api/projects/{project.id}/secrets/"
    return f"{base}{name}/" if name else base


def error_of(response) -> dict:
    body = response.json()
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "extra"}, body
    return body["error"]


@pytest.fixture
def value() -> str:
    return "canary-" + secrets.token_urlsafe(24)


def test_put_stores_the_value_and_answers_the_metadata_only(user, project, value):
    response = client_for(user).put(url(project, "API_KEY"), {"value": value}, format="json")

    assert response.status_code == 200, response.content
    body = response.json()
    assert set(body) == {"name", "kind", "filled", "length", "store", "updated_at"}
    assert (body["name"], body["kind"], body["filled"], body["length"], body["store"]) == (
        "API_KEY",
        "user",
        True,
        len(value),
        "vault",
    )
    assert value.encode() not in response.content
    assert get_store().get(project_scope(project.id), "API_KEY") == value
    assert SecretAudit.objects.get(secret__key="API_KEY").actor == f"user:{user.id}"


def test_put_twice_answers_200_both_times(user, project, value):
    client = client_for(user)
    assert client.put(url(project, "API_KEY"), {"value": value}, format="json").status_code == 200
    second = client.put(url(project, "API_KEY"), {"value": value + "-2"}, format="json")
    assert second.status_code == 200 and second.json()["length"] == len(value) + 2


def test_list_shows_every_secret_by_name_and_never_a_value(user, project, value):
    services.secret_put(project_id=project.id, key="B_KEY", value=value, actor="user:1")
    services.secret_generate(project_id=project.id, key="A_GENERATED")

    response = client_for(user).get(url(project))

    assert response.status_code == 200
    body = response.json()
    assert [(s["name"], s["kind"], s["filled"]) for s in body] == [
        ("A_GENERATED", "infra", True),
        ("B_KEY", "user", True),
    ]
    generated = get_store().get(project_scope(project.id), "A_GENERATED")
    assert value.encode() not in response.content and generated.encode() not in response.content


def test_delete_answers_204_and_the_secret_stays_listed_unfilled(user, project, value):
    services.secret_put(project_id=project.id, key="API_KEY", value=value, actor="user:1")
    client = client_for(user)

    response = client.delete(url(project, "API_KEY"))
    again = client.delete(url(project, "API_KEY"))

    assert response.status_code == 204 and not response.content and again.status_code == 204
    listed = client.get(url(project)).json()
    assert [(s["name"], s["filled"], s["length"]) for s in listed] == [("API_KEY", False, 0)]


def test_delete_of_a_name_never_set_is_404(user, project):
    response = client_for(user).delete(url(project, "NEVER_SET"))
    assert response.status_code == 404 and error_of(response)["code"] == "secret_not_found"


@pytest.mark.parametrize(
    ("name", "body", "code"),
    [
        ("lower_case", {"value": "a-good-value"}, "secret_name_invalid"),
        ("PATH", {"value": "a-good-value"}, "secret_name_reserved"),
        ("API_KEY", {"value": ""}, "validation_error"),
        ("API_KEY", {"value": "   "}, "secret_value_empty"),
        ("API_KEY", {"value": "x" * (64 * 1024 + 1)}, "secret_value_too_long"),
        ("API_KEY", {"value": "secret\x00with-a-nul"}, "validation_error"),
        ("API_KEY", {"value": 12345678}, "validation_error"),
        ("API_KEY", {}, "validation_error"),
        ("API_KEY", ["not", "an", "object"], "validation_error"),
    ],
)
def test_put_refuses_bad_input_with_400_in_the_envelope_without_the_value(user, project, name, body, code):
    response = client_for(user).put(url(project, name), body, format="json")

    assert response.status_code == 400, response.content
    assert error_of(response)["code"] == code
    if isinstance(body, dict) and isinstance(body.get("value"), str) and body["value"].strip():
        assert body["value"][:8].encode() not in response.content
    assert not SecretMeta.objects.exists()


def test_anonymous_is_refused_with_401(project):
    from rest_framework.test import APIClient

    client = APIClient()
    assert client.get(url(project)).status_code == 401
    assert client.put(url(project, "API_KEY"), {"value": "a-good-value"}, format="json").status_code == 401
    assert client.delete(url(project, "API_KEY")).status_code == 401


def test_another_persons_project_is_404_for_every_method(other_user, project, value):
    services.secret_put(project_id=project.id, key="API_KEY", value=value, actor="user:1")
    client = client_for(other_user)

    for response in (
        client.get(url(project)),
        client.put(url(project, "API_KEY"), {"value": "taken-over"}, format="json"),
        client.delete(url(project, "API_KEY")),
    ):
        assert response.status_code == 404 and error_of(response)["code"] == "project_not_found"
        assert value.encode() not in response.content
    assert get_store().get(project_scope(project.id), "API_KEY") == value


def test_a_missing_project_and_a_huge_id_are_404(user):
    client = client_for(user)
    assert client.get("/api/projects/987654/secrets/").status_code == 404
    assert client.get(f"/api/projects/{2**70}/secrets/").status_code == 404


def test_staff_may_set_anyones_secret(admin_user, project, value):
    response = client_for(admin_user).put(url(project, "API_KEY"), {"value": value}, format="json")
    assert response.status_code == 200 and value.encode() not in response.content


def test_other_methods_are_405(user, project):
    client = client_for(user)
    assert client.post(url(project), {}, format="json").status_code == 405
    assert client.get(url(project, "API_KEY")).status_code == 405


def test_the_schema_documents_the_routes_and_marks_the_value_write_only(user):
    schema = client_for(user).get("/api/schema/?format=json").json()
    paths = schema["paths"]
    assert set(paths["/api/projects/{id}/secrets/"]) >= {"get"}
    detail = paths["/api/projects/{id}/secrets/{name}/"]
    assert {"put", "delete"} <= set(detail) and "get" not in detail
    assert {"200", "400", "401", "404"} <= set(detail["put"]["responses"])
    assert "204" in detail["delete"]["responses"]
    assert [p["name"] for p in detail["put"]["parameters"]] == ["id", "name"]
    value = schema["components"]["schemas"]["SecretPut"]["properties"]["value"]
    assert value["writeOnly"] is True and value["maxLength"] == 64 * 1024
