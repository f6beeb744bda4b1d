"""The bot pool's services on the real database: adding, atomic allocation under concurrency
(threads on PostgreSQL: no bot ever serves two projects, no project gets two bots), release,
retire, invalid and valid again. Telegram is not involved here (see tests/telegram/test_bot_tokens.py)."""

from __future__ import annotations

import threading

import pytest
from django.db import connection, connections

from config.errors import Conflict
from projects.models import Project
from secrets_meta import bots as pool
from secrets_meta.models import BotToken, SecretAudit
from secrets_meta.stores import BOTS_SCOPE, get_store


def token_for(bot_id: int) -> str:
    return f"{bot_id}:" + ("A" * 30) + f"{bot_id:05d}"[-5:]


def add(bot_id: int, *, source: str = "pool") -> BotToken:
    identity = pool.Identity(id=bot_id, username=f"pool_{bot_id}_bot")
    return pool.bot_add(token=token_for(bot_id), identity=identity, actor="test", source=source)


def projects(owner, n: int) -> list[int]:
    return [Project.objects.create(owner=owner, description=f"a telegram bot number {i}").id for i in range(n)]


def run_at_once(n: int, work) -> list:
    """Run ``work(i)`` on n threads released together; each thread closes its own connection."""
    barrier, results, errors = threading.Barrier(n), [None] * n, []

    def thread(i: int) -> None:
        try:
            barrier.wait(10)
            results[i] = work(i)
        except Exception as exc:  # reported below, with the thread's number
            errors.append((i, exc))
        finally:
            connections.close_all()

    threads = [threading.Thread(target=thread, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


@pytest.mark.django_db(transaction=True)
def test_ten_projects_at_once_share_five_free_bots_without_any_bot_twice(user):
    if connection.vendor != "postgresql":
        pytest.skip("row locks with SKIP LOCKED need PostgreSQL")
    bots = [add(9_000_001 + i).id for i in range(5)]
    ids = projects(user, 10)

    got = run_at_once(10, lambda i: getattr(pool.bot_assign_free(project_id=ids[i]), "id", None))

    handed = [bot for bot in got if bot is not None]
    assert sorted(handed) == sorted(bots)  # every bot once, none twice
    assert got.count(None) == 5
    assigned = list(BotToken.objects.filter(status="assigned").values_list("project_id", flat=True))
    assert len(assigned) == 5 == len(set(assigned))
    for project_id, bot in zip(ids, got, strict=True):
        if bot is not None:
            assert BotToken.objects.get(id=bot).project_id == project_id


@pytest.mark.django_db(transaction=True)
def test_one_project_asking_five_times_at_once_gets_one_bot(user):
    if connection.vendor != "postgresql":
        pytest.skip("row locks with SKIP LOCKED need PostgreSQL")
    for i in range(3):
        add(9_100_001 + i)
    (project_id,) = projects(user, 1)

    got = run_at_once(5, lambda i: pool.bot_assign_free(project_id=project_id).id)

    assert len(set(got)) == 1
    assert BotToken.objects.filter(status="assigned").count() == 1


@pytest.mark.django_db
def test_add_keeps_the_token_in_the_store_only_and_audits_without_it(user):
    row = add(9_200_001)

    assert (row.status, row.source, row.username, row.token_length) == (
        "free",
        "pool",
        "pool_9200001_bot",
        len(token_for(9_200_001)),
    )
    assert get_store().get(BOTS_SCOPE, "9200001") == token_for(9_200_001)
    assert pool.bot_token_value(row) == token_for(9_200_001)
    audit = SecretAudit.objects.get(bot_token=row)
    assert audit.action == "added" and token_for(9_200_001) not in audit.detail


@pytest.mark.django_db
def test_a_bot_serving_a_project_cannot_be_added_again_or_retired(user):
    row = add(9_300_001)
    (project_id,) = projects(user, 1)
    pool.bot_assign_free(project_id=project_id)

    with pytest.raises(Conflict) as added:
        add(9_300_001)
    with pytest.raises(Conflict) as retired:
        pool.bot_retire(bot_token_id=row.id, actor="test")

    assert added.value.code == "bot_token_in_use" and retired.value.code == "bot_token_assigned"


@pytest.mark.django_db
def test_release_frees_a_pool_bot_once_and_retire_forgets_its_token(user):
    row = add(9_400_001)
    (project_id,) = projects(user, 1)
    pool.bot_assign_free(project_id=project_id)

    first = pool.bot_release(bot_token_id=row.id, actor="test")
    second = pool.bot_release(bot_token_id=row.id, actor="test")
    retired = pool.bot_retire(bot_token_id=row.id, actor="test")

    assert (first.status, first.project_id) == ("free", None) and second.status == "free"
    assert SecretAudit.objects.filter(bot_token=row, action="released").count() == 1
    assert retired.status == "retired" and get_store().get(BOTS_SCOPE, row.store_name) is None
    assert pool.bot_assign_free(project_id=project_id) is None  # a retired bot is never handed out


@pytest.mark.django_db
def test_an_invalid_bot_is_not_handed_out_until_it_is_valid_again(user):
    row = add(9_500_001)
    (project_id,) = projects(user, 1)

    pool.bot_mark_invalid(bot_token_id=row.id, error="Telegram does not accept this token")
    assert pool.bot_assign_free(project_id=project_id) is None
    pool.bot_mark_valid(bot_token_id=row.id, identity=pool.Identity(id=9_500_001, username="renamed_bot"))

    got = pool.bot_assign_free(project_id=project_id)
    assert got is not None and got.id == row.id and got.username == "renamed_bot" and got.last_error == ""


@pytest.mark.django_db
def test_a_persons_own_bot_replaces_the_projects_pool_bot_which_goes_back_to_the_pool(user):
    pooled = add(9_600_001)
    (project_id,) = projects(user, 1)
    pool.bot_assign_free(project_id=project_id)

    own = pool.bot_assign_own(
        project_id=project_id,
        token=token_for(9_600_002),
        identity=pool.Identity(id=9_600_002, username="mine_bot"),
        actor="user:1",
    )

    pooled.refresh_from_db()
    assert (own.status, own.source, own.project_id) == ("assigned", "user", project_id)
    assert (pooled.status, pooled.project_id) == ("free", None)
    assert BotToken.objects.filter(project_id=project_id, status="assigned").count() == 1
