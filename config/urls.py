from django.contrib import admin
from django.urls import include, path
from drf_spectacular.views import SpectacularAPIView, SpectacularSwaggerView
from rest_framework.routers import DefaultRouter

from agents.api import WorkerAskView, WorkerProgressView, WorkerResultView
from orchestrator.api import ProjectBotView, ProjectEngineViewSet
from orchestrator.codehost.webhook import github_webhook
from orchestrator.console import favicon
from orchestrator.metrics import metrics_view
from orchestrator.telegram.webhook import telegram_webhook
from projects.api import RunEventStreamView, RunViewSet
from secrets_meta.api import ProjectSecretsView, ProjectSecretView

router = DefaultRouter()
router.register("projects", ProjectEngineViewSet, basename="project")
router.register("runs", RunViewSet, basename="run")

urlpatterns = [
    path("admin/", admin.site.urls),
    path("metrics", metrics_view, name="metrics"),  # Prometheus (bearer METRICS_TOKEN; 404 without it)
    path("favicon.ico", favicon, name="favicon"),
    path("api/runs/<int:pk>/events/", RunEventStreamView.as_view(), name="run-events"),
    path("api/projects/<int:pk>/secrets/", ProjectSecretsView.as_view(), name="project-secrets"),
    path("api/projects/<int:pk>/secrets/<str:name>/", ProjectSecretView.as_view(), name="project-secret"),
    path("api/projects/<int:pk>/bot/", ProjectBotView.as_view(), name="project-bot"),
    path("api/", include(router.urls)),
    path("api/runs/<int:run_id>/worker/progress/", WorkerProgressView.as_view(), name="worker-progress"),
    path("api/runs/<int:run_id>/worker/ask/", WorkerAskView.as_view(), name="worker-ask"),
    path("api/runs/<int:run_id>/worker/result/", WorkerResultView.as_view(), name="worker-result"),
    path("telegram/webhook/", telegram_webhook, name="telegram-webhook"),
    path("github/webhook/", github_webhook, name="github-webhook"),  # signed check-run deliveries
    path("api/schema/", SpectacularAPIView.as_view(), name="schema"),
    path("api/docs/", SpectacularSwaggerView.as_view(url_name="schema"), name="docs"),
]
