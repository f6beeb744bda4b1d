"""Prometheus metrics: the factory's own series, read from the database (and the broker) on scrape.

``GET /metrics`` with ``Authorization: Bearer <METRICS_TOKEN>``. Without METRICS_TOKEN the route
answers 404 (as if it did not exist); a missing credential 401, a wrong one 403.

Nothing is counted in process memory: every series is computed from the tables (the truth) when
Prometheus scrapes, so any web process answers the same and a restart loses nothing. Queue
lengths come from the broker (Redis lists, one per priority step; the filesystem transport's
message files).

| series | type | labels |
|---|---|---|
| ``factory_runs`` | gauge | status, kind |
| ``factory_stage_duration_seconds`` | histogram | stage (finished stage runs) |
| ``factory_queue_length`` | gauge | queue |
| ``factory_broker_up`` | gauge | |
| ``factory_workers`` | gauge | state, role |
| ``factory_releases`` | gauge | status |
| ``factory_incidents_open`` | gauge | |
| ``factory_escalations_waiting`` | gauge | |
| ``factory_cost_dollars_total`` | counter | project (slug, else ``project-<id>``) |
| ``factory_outbound_messages_pending`` | gauge | |

And the web process's own, counted as requests are answered (``RequestMetricsMiddleware``):
``factory_http_requests_total`` (view, method, status class) and
``factory_http_request_duration_seconds`` (view; until the response starts). Several gunicorn
worker processes add up when PROMETHEUS_MULTIPROC_DIR is set in their environment
(prometheus_client's multiprocess mode: each process writes its counts to a file there); without
it they are the answering process's (right for runserver and one-process servers), with its
``process_*`` figures.
"""

from __future__ import annotations

import hmac
import os
import time
from datetime import timedelta
from pathlib import Path

import redis
import structlog
from django.conf import settings
from django.db.models import Count, DurationField, ExpressionWrapper, F, Q, Sum
from django.http import Http404, HttpResponse
from django.views.decorators.http import require_GET
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Histogram,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.registry import Collector
from redis.exceptions import RedisError

from agents.models import Escalation, Usage, WorkerSession
from projects.models import Deployment, Incident, OutboundMessage, PipelineRun, StageRun

log = structlog.get_logger(__name__)

# Stage durations (seconds): from a second-long Notify to a Developer's half hour.
STAGE_BUCKETS = (1, 5, 15, 30, 60, 120, 300, 600, 1200, 1800, 3600)
QUEUES = ("pipeline", "agents", "maintenance", "notify")


def queue_lengths() -> dict[str, int] | None:
    """Messages waiting per Celery queue, or None when the broker cannot be read (or is neither
    Redis nor the filesystem transport)."""
    url = settings.CELERY_BROKER_URL
    options = settings.CELERY_BROKER_TRANSPORT_OPTIONS
    if url.startswith("filesystem://"):
        try:
            names = [p.name for p in Path(options["data_folder_out"]).iterdir()]
        except OSError:
            return None
        return {queue: sum(1 for name in names if name.endswith(f".{queue}.msg")) for queue in QUEUES}
    if not url.startswith(("redis://", "rediss://")):
        return None
    # Kombu keeps one list per priority step: "<queue>" for step 0, "<queue><sep><step>" after it.
    sep, steps = options.get("sep", "\x06\x16"), options.get("priority_steps") or [0]
    keys = {queue: [queue if step == 0 else f"{queue}{sep}{step}" for step in steps] for queue in QUEUES}
    client = redis.Redis.from_url(url, socket_timeout=2, socket_connect_timeout=2)
    try:
        pipe = client.pipeline(transaction=False)
        for queue in QUEUES:
            for key in keys[queue]:
                pipe.llen(key)
        answers = iter(pipe.execute())
        return {queue: sum(next(answers) for _ in keys[queue]) for queue in QUEUES}
    except RedisError as exc:
        log.warning("metrics_broker_unreadable", error=str(exc))
        return None
    finally:
        client.close()


class FactoryCollector(Collector):
    """Every ``factory_…`` series, computed when collected."""

    def collect(self):
        runs = GaugeMetricFamily("factory_runs", "Pipeline runs by status and kind.", labels=["status", "kind"])
        counts = {
            (row["status"], row["kind"]): row["n"]
            for row in PipelineRun.objects.order_by().values("status", "kind").annotate(n=Count("id"))
        }
        for status in PipelineRun.Status.values:
            for kind in PipelineRun.Kind.values:
                runs.add_metric([status, kind], counts.get((status, kind), 0))
        yield runs

        yield self._stage_durations()

        queues = queue_lengths()
        up = int(queues is not None)
        yield GaugeMetricFamily("factory_broker_up", "1 when the broker's queues could be read.", value=up)
        if queues is not None:
            lengths = GaugeMetricFamily("factory_queue_length", "Messages waiting per Celery queue.", labels=["queue"])
            for queue, length in queues.items():
                lengths.add_metric([queue], length)
            yield lengths

        workers = GaugeMetricFamily("factory_workers", "Worker sessions by state and role.", labels=["state", "role"])
        counts = {
            (row["state"], row["role"]): row["n"]
            for row in WorkerSession.objects.order_by().values("state", "role").annotate(n=Count("id"))
        }
        roles = sorted({role for _, role in counts} | {"developer", "tester"})
        for state in WorkerSession.State.values:
            for role in roles:
                workers.add_metric([state, role], counts.get((state, role), 0))
        yield workers

        releases = GaugeMetricFamily("factory_releases", "Releases (deployments) by status.", labels=["status"])
        counts = dict(Deployment.objects.order_by().values_list("status").annotate(n=Count("id")))
        for status in Deployment.Status.values:
            releases.add_metric([status], counts.get(status, 0))
        yield releases

        yield GaugeMetricFamily(
            "factory_incidents_open",
            "Outages of live releases not yet over (detected or recovering).",
            value=Incident.objects.filter(status__in=Incident.OPEN).count(),
        )
        yield GaugeMetricFamily(
            "factory_escalations_waiting",
            "Questions to a person waiting for an answer.",
            value=Escalation.objects.filter(status=Escalation.Status.OPEN).count(),
        )
        yield GaugeMetricFamily(
            "factory_outbound_messages_pending",
            "Messages to people not yet sent (pending or being sent).",
            value=OutboundMessage.objects.filter(status__in=OutboundMessage.UNFINISHED).count(),
        )

        cost = CounterMetricFamily(
            "factory_cost_dollars", "Agent spend in US dollars per project (the usage ledger).", labels=["project"]
        )
        rows = Usage.objects.order_by().values("project_id", "project__slug").annotate(total=Sum("cost_usd"))
        for row in rows:
            cost.add_metric([row["project__slug"] or f"project-{row['project_id']}"], float(row["total"] or 0))
        yield cost

    @staticmethod
    def _stage_durations() -> HistogramMetricFamily:
        histogram = HistogramMetricFamily(
            "factory_stage_duration_seconds",
            "How long finished stage runs took, from claim to outcome.",
            labels=["stage"],
        )
        duration = ExpressionWrapper(F("finished_at") - F("started_at"), output_field=DurationField())
        buckets = {
            f"le_{i}": Count("id", filter=Q(duration__lte=timedelta(seconds=bound)))
            for i, bound in enumerate(STAGE_BUCKETS)
        }
        rows = (
            StageRun.objects.order_by()
            .filter(started_at__isnull=False, finished_at__isnull=False)
            .annotate(duration=duration)
            .values("stage")
            .annotate(count=Count("id"), total=Sum("duration"), **buckets)
        )
        for row in rows:
            points = [(str(float(bound)), row[f"le_{i}"]) for i, bound in enumerate(STAGE_BUCKETS)]
            points.append(("+Inf", row["count"]))
            total = row["total"].total_seconds() if row["total"] is not None else 0.0
            histogram.add_metric([row["stage"]], points, sum_value=total)
        return histogram


# --- the web process's requests ----------------------------------------------------------
HTTP_METHODS = {"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"}
HTTP_REQUESTS = Counter("factory_http_requests", "Requests answered by the web app.", ["view", "method", "status"])
HTTP_SECONDS = Histogram(
    "factory_http_request_duration_seconds",
    "Time from a request's arrival to its response (the start of a stream's).",
    ["view"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10),
)


class RequestMetricsMiddleware:
    """Counts every answer by the view that gave it (its URL name; ``unmatched`` for none), the
    method and the status class, and how long it took."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        started = time.perf_counter()
        response = self.get_response(request)
        match = getattr(request, "resolver_match", None)
        view = (match.view_name or match.route) if match is not None else "unmatched"
        method = request.method if request.method in HTTP_METHODS else "other"
        HTTP_REQUESTS.labels(view, method, f"{response.status_code // 100}xx").inc()
        HTTP_SECONDS.labels(view).observe(time.perf_counter() - started)
        return response


def exposition() -> bytes:
    """The whole scrape, in Prometheus' text format: the factory's series, then the web app's."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(FactoryCollector())
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        web = CollectorRegistry()
        multiprocess.MultiProcessCollector(web)
    else:
        web = REGISTRY
    return generate_latest(registry) + generate_latest(web)


@require_GET
def metrics_view(request):
    token = settings.METRICS_TOKEN
    if not token:
        raise Http404("Metrics are off: set METRICS_TOKEN.")
    scheme, _, given = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        response = HttpResponse("A bearer token is required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    if not hmac.compare_digest(given.strip().encode(), token.encode()):
        return HttpResponse("Wrong token.\n", status=403, content_type="text/plain")
    return HttpResponse(exposition(), content_type=CONTENT_TYPE_LATEST)
