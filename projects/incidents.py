"""Outages of live releases: the one owner of Incident rows and their steps.

The engine's probe finds a live release down and opens an incident (at most one open per
project); its repair restarts the release, then rolls back to the previous healthy release, then
gives up and leaves it to a person. Every step is an IncidentEvent; the owner is told when their
project goes down, when it is back, and when the factory gives up.
"""

from __future__ import annotations

import structlog
from django.db import IntegrityError, transaction
from django.utils import timezone

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
def incident_give_up(*, incident_id: int, detail: str) -> bool:
    """Restarts and rollback failed: stop trying; the incident stays visible as failed."""
    incident = Incident.objects.select_related("project").filter(id=incident_id, status__in=Incident.OPEN).first()
    if incident is None:
        return False
    Incident.objects.filter(id=incident.id).update(status=Incident.Status.FAILED, ended_at=timezone.now())
    IncidentEvent.objects.create(incident_id=incident.id, type=Type.GAVE_UP, detail=detail[:500])
    _tell(
        incident,
        f"{_name(incident)} is down and could not be repaired ({detail[:200]}). The factory stopped trying: "
        "ask for a change or a redeploy, or roll back by hand (/rollback).",
    )
    return True
