"""Outages of live releases: the one owner of Incident rows and their steps.

The engine's probe finds a live release down and opens an incident (at most one open per
project); its repair restarts the release, then rolls back to the previous healthy release, then
gives up and leaves it to a person. Every step is an IncidentEvent; the owner is told when their
project goes down, when it is back, and when the factory gives up.
"""

from __future__ import annotations

import structlog
from celery import current_app
from django.db import IntegrityError, transaction
from django.utils import timezone

from config import task_names
from projects import notifications
from projects.models import Deployment, Incident, IncidentEvent

Type = IncidentEvent.Type
log = structlog.get_logger(__name__)


def _tell(incident: Incident, text: str) -> None:
    notifications.notify_person(user_id=incident.project.owner_id, text=text)


def _name(incident: Incident) -> str:
    return incident.project.name or f"Project #{incident.project_id}"


@transaction.atomic
def incident_open(*, deployment_id: int, reason: str) -> tuple[Incident, bool]:
    """The live release is down: its project's open incident, or a new one (True)."""
    deployment = Deployment.objects.select_related("project").get(id=deployment_id)
    existing = Incident.objects.filter(project_id=deployment.project_id, status__in=Incident.OPEN).first()
    if existing is not None:
        return existing, False
    try:
        with transaction.atomic():
            incident = Incident.objects.create(
                project_id=deployment.project_id, deployment_id=deployment.id, reason=reason[:300]
            )
    except IntegrityError:  # opened concurrently by another probe
        return Incident.objects.get(project_id=deployment.project_id, status__in=Incident.OPEN), False
    IncidentEvent.objects.create(incident=incident, type=Type.DETECTED, detail=reason[:500])
    incident.project = deployment.project
    _tell(incident, f"{_name(incident)} is down ({reason[:200]}). Repairing it now.")
    return incident, True


@transaction.atomic
def incident_step(*, incident_id: int, type: str, detail: str = "", restarted: bool = False) -> Incident | None:
    """Record a repair step; the incident is `recovering` from the first one. None if it is over."""
    incident = Incident.objects.select_for_update().filter(id=incident_id, status__in=Incident.OPEN).first()
    if incident is None:
        return None
    fields = {}
    if incident.status == Incident.Status.DETECTED:
        fields |= {"status": Incident.Status.RECOVERING, "recovering_at": timezone.now()}
    if restarted:
        fields["restarts"] = incident.restarts + 1
    if fields:
        Incident.objects.filter(id=incident.id).update(**fields)
    IncidentEvent.objects.create(incident_id=incident.id, type=type, detail=detail[:500])
    log.info("incident_step", incident_id=incident.id, project_id=incident.project_id, type=type, detail=detail[:300])
    incident.refresh_from_db()
    return incident


@transaction.atomic
def incident_resolve(*, incident_id: int, serving_id: int, type: str, detail: str = "") -> bool:
    """The project serves again (restarted, rolled back, or it came back by itself)."""
    incident = Incident.objects.select_related("project").filter(id=incident_id, status__in=Incident.OPEN).first()
    if incident is None:
        return False
    updated = Incident.objects.filter(id=incident.id, status__in=Incident.OPEN).update(
        status=Incident.Status.RESOLVED, serving_id=serving_id, ended_at=timezone.now()
    )
    if not updated:
        return False
    IncidentEvent.objects.create(incident_id=incident.id, type=type, detail=detail[:500])
    how = {Type.RESTARTED: "restarted", Type.ROLLED_BACK: "rolled back to an earlier release"}.get(type, "back")
    _tell(incident, f"{_name(incident)} is back: {how}." + (f" {detail[:200]}" if detail else ""))
    return True


@transaction.atomic
def incident_give_up(*, incident_id: int, detail: str, tell: bool = True) -> bool:
    """Restarts and rollback failed: stop trying; the incident stays visible as failed. With
    ``tell=False`` the caller asks the person itself (an escalation says it all, once)."""
    incident = Incident.objects.select_related("project").filter(id=incident_id, status__in=Incident.OPEN).first()
    if incident is None:
        return False
    Incident.objects.filter(id=incident.id).update(status=Incident.Status.FAILED, ended_at=timezone.now())
    IncidentEvent.objects.create(incident_id=incident.id, type=Type.GAVE_UP, detail=detail[:500])
    if tell:
        _tell_given_up(incident, detail)
    return True


def _tell_given_up(incident: Incident, detail: str) -> None:
    _tell(
        incident,
        f"{_name(incident)} is down and could not be repaired ({detail[:200]}). The factory stopped trying: "
        "ask for a change or a redeploy, or roll back by hand (/rollback).",
    )


def incident_tell_given_up(*, incident_id: int, detail: str) -> None:
    """Tell the owner the factory gave up on this incident (when no question could say it)."""
    _tell_given_up(Incident.objects.select_related("project").get(id=incident_id), detail)


@transaction.atomic
def incident_retry(*, incident_id: int, by: str) -> Incident | None:
    """A person asked to try again an incident the factory gave up on: it is open again with a
    fresh count of restarts, and its repair starts over (restart, then roll back). None when it
    cannot be reopened (not given up on, or the project has another open incident)."""
    incident = Incident.objects.select_for_update().filter(id=incident_id, status=Incident.Status.FAILED).first()
    if incident is None:
        return None
    try:
        with transaction.atomic():
            Incident.objects.filter(id=incident.id).update(
                status=Incident.Status.RECOVERING, restarts=0, ended_at=None, recovering_at=timezone.now()
            )
    except IntegrityError:  # a newer outage of the project is already open: that one is repaired
        return None
    IncidentEvent.objects.create(incident_id=incident.id, type=Type.RETRY_ASKED, detail=f"by {by}"[:500])
    transaction.on_commit(
        lambda: current_app.send_task(task_names.RELEASES_REPAIR, kwargs={"incident_id": incident.id})
    )
    incident.refresh_from_db()
    return incident


@transaction.atomic
def incidents_close(*, project_id: int, detail: str) -> int:
    """The project was stopped (or removed) by a person: its open incidents end, nothing is
    repaired any more. The number closed."""
    open_ids = list(
        Incident.objects.select_for_update()
        .filter(project_id=project_id, status__in=Incident.OPEN)
        .values_list("id", flat=True)
    )
    for incident_id in open_ids:
        Incident.objects.filter(id=incident_id).update(status=Incident.Status.RESOLVED, ended_at=timezone.now())
        IncidentEvent.objects.create(incident_id=incident_id, type=Type.CLOSED, detail=detail[:500])
    return len(open_ids)
