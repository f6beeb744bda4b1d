"""Settings, all read from the environment once, here.

The embedded default needs no services: SQLite, Celery's filesystem transport, the process
runtime, the scripted agent, a local bare git remote and local deploys on loopback.
``DATABASE_URL`` and ``CELERY_BROKER_URL`` / ``REDIS_URL`` switch to PostgreSQL and Redis.
"""

from __future__ import annotations

from pathlib import Path

import dj_database_url
from django.core.exceptions import ImproperlyConfigured
from kombu import Queue

from config.env import bot_api_format, env_bool, env_float, env_int, env_list, env_path, env_str

BASE_DIR = Path(__file__).resolve().parent.parent

# Where the factory keeps its own files: the SQLite database, the filesystem broker, bare git
# repositories, worker workspaces and releases.
FACTORY_HOME = env_path("FACTORY_HOME", BASE_DIR / "var")
FACTORY_HOME.mkdir(parents=True, exist_ok=True)

DEBUG = env_bool("DJANGO_DEBUG", False)
# A fixed key is fine for the embedded default on loopback; production must set its own.
SECRET_KEY = env_str("DJANGO_SECRET_KEY", "embedded-default-not-for-production" if not env_bool("PRODUCTION") else None)
ALLOWED_HOSTS = env_list("DJANGO_ALLOWED_HOSTS", ["127.0.0.1", "localhost", "testserver"])
# Behind a reverse proxy (Caddy in compose): the origins admin forms may be posted from, and
# whether X-Forwarded-Proto tells that the request came over https.
CSRF_TRUSTED_ORIGINS = env_list("DJANGO_CSRF_TRUSTED_ORIGINS", [])
if env_bool("DJANGO_BEHIND_PROXY", False):
    SECURE_PROXY_SSL_HEADER = ("HTTP_X_FORWARDED_PROTO", "https")

INSTALLED_APPS = [
    # Operator console: Django's admin, with the overview page and the Flower link as its site.
    "orchestrator.apps.FactoryAdminConfig",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "rest_framework",
    "rest_framework.authtoken",
    "drf_spectacular",
    "django_celery_beat",
    "projects",
    "agents",
    "secrets_meta",
    "orchestrator",
]

MIDDLEWARE = [
    # First: under /api/ every error answers JSON in the envelope, whoever produced it.
    "config.errors.ApiEnvelopeMiddleware",
    # Operator console: every answer counted for /metrics (factory_http_*).
    "orchestrator.metrics.RequestMetricsMiddleware",
    "django.middleware.security.SecurityMiddleware",
    # Operator console: static files (admin's CSS and scripts) served by the app itself, under
    # runserver and gunicorn alike, with or without collectstatic.
    "whitenoise.middleware.WhiteNoiseMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
    "django.middleware.clickjacking.XFrameOptionsMiddleware",
]

ROOT_URLCONF = "config.urls"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ],
        },
    },
]

WSGI_APPLICATION = "config.wsgi.application"

DATABASE_URL = env_str("DATABASE_URL", f"sqlite:///{FACTORY_HOME / 'db.sqlite3'}")
# Persistent connections (seconds; 0 closes one after each request or task): a stage task or a
# request does not pay for a new connection. Health checks drop a connection the server closed.
DATABASES = {
    "default": dj_database_url.parse(DATABASE_URL, conn_max_age=env_int("DB_CONN_MAX_AGE", 60), conn_health_checks=True)
}
if DATABASES["default"]["ENGINE"] == "django.db.backends.sqlite3":
    # Several processes (web, worker, beat) share the file: WAL lets readers run beside the
    # writer, IMMEDIATE transactions take the write lock up front instead of failing mid-way.
    DATABASES["default"]["OPTIONS"] = {
        "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        "transaction_mode": "IMMEDIATE",
        "timeout": 30,
    }
    # Tests that start real worker processes need a database file they can open too.
    DATABASES["default"]["TEST"] = {"NAME": str(FACTORY_HOME / "test-db.sqlite3")}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

AUTH_PASSWORD_VALIDATORS = [
    {"NAME": "django.contrib.auth.password_validation.UserAttributeSimilarityValidator"},
    {"NAME": "django.contrib.auth.password_validation.MinimumLengthValidator"},
]

LANGUAGE_CODE = "en-us"
TIME_ZONE = "UTC"
USE_I18N = True
USE_TZ = True
STATIC_URL = "static/"
STATIC_ROOT = FACTORY_HOME / "static"

# --- API ------------------------------------------------------------------------------
REST_FRAMEWORK = {
    "DEFAULT_AUTHENTICATION_CLASSES": [
        "config.api.CachedTokenAuthentication",
        "rest_framework.authentication.SessionAuthentication",
    ],
    "DEFAULT_PERMISSION_CLASSES": ["rest_framework.permissions.IsAuthenticated"],
    "DEFAULT_PARSER_CLASSES": [
        "config.api.JSONParser",
        "rest_framework.parsers.FormParser",
        "rest_framework.parsers.MultiPartParser",
    ],
    "DEFAULT_SCHEMA_CLASS": "config.schema.AutoSchema",
    "EXCEPTION_HANDLER": "config.errors.api_exception_handler",
    "DEFAULT_PAGINATION_CLASS": "config.api.Pagination",
    "PAGE_SIZE": 20,  # the default ?limit=; at most config.api.Pagination.max_limit (100)
}
SPECTACULAR_SETTINGS = {
    "TITLE": "Service factory API",
    "DESCRIPTION": "Describe a service; the factory plans, builds, tests and deploys it. Every error is "
    '`{"error": {"code", "message", "extra"}}` as JSON.',
    "VERSION": "0.1.0",
    # 3.1: the schema is JSON Schema (null is a type), which the worker API's pydantic models emit.
    "OAS_VERSION": "3.1.0",
    "POSTPROCESSING_HOOKS": ["drf_spectacular.hooks.postprocess_schema_enums", "config.schema.any_value_stays_any"],
    "ENUM_NAME_OVERRIDES": {
        "ProjectKindEnum": "projects.models.Project.Kind",
        "RunKindEnum": "projects.models.PipelineRun.Kind",
        "RunStatusEnum": "projects.models.PipelineRun.Status",
        "StageRunStatusEnum": "projects.models.StageRun.Status",
        "StageEnum": "projects.models.Stage",
    },
}
# What an API token names is remembered this long per web process (seconds; 0: looked up on
# every request): a deleted token or a deactivated user is refused within this time, not at once.
API_TOKEN_CACHE_SECONDS = env_float("API_TOKEN_CACHE_SECONDS", 5.0)
# The largest request body read (bytes); a larger one is refused with 413 before it is read.
DATA_UPLOAD_MAX_MEMORY_SIZE = env_int("DATA_UPLOAD_MAX_MEMORY_SIZE", 1024 * 1024)
# Server-sent event streams send a keep-alive comment after this many silent seconds.
SSE_KEEPALIVE_SECONDS = env_float("SSE_KEEPALIVE_SECONDS", 15.0)
# One stream lasts at most this long; then it ends with a retry hint and the client resumes
# with Last-Event-ID. Open streams per user, and in all, are capped (429 over the cap).
SSE_MAX_SECONDS = env_float("SSE_MAX_SECONDS", 300.0)
SSE_MAX_STREAMS_PER_USER = env_int("SSE_MAX_STREAMS_PER_USER", 4)
SSE_MAX_STREAMS = env_int("SSE_MAX_STREAMS", 16)
# The longest project description we accept (characters).
PROJECT_DESCRIPTION_MAX_CHARS = env_int("PROJECT_DESCRIPTION_MAX_CHARS", 4000)
# One person (not staff) may start at most this many projects per window; 0 turns the limit off.
PROJECT_CREATE_LIMIT = env_int("PROJECT_CREATE_LIMIT", 10)
PROJECT_CREATE_WINDOW_SECONDS = env_int("PROJECT_CREATE_WINDOW_SECONDS", 600)

# --- Celery ---------------------------------------------------------------------------
REDIS_URL = env_str("REDIS_URL", "")
CELERY_BROKER_URL = env_str("CELERY_BROKER_URL", REDIS_URL or "filesystem://")
BROKER_FOLDER = env_path("CELERY_BROKER_FOLDER", FACTORY_HOME / "broker")
if CELERY_BROKER_URL.startswith("filesystem://"):
    for _sub in ("queue", "control"):
        (BROKER_FOLDER / _sub).mkdir(parents=True, exist_ok=True)
    # Kombu's transport with whole-file writes (a reader could take a half-written message).
    CELERY_BROKER_TRANSPORT = "orchestrator.broker_fs:Transport"
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        "data_folder_in": str(BROKER_FOLDER / "queue"),
        "data_folder_out": str(BROKER_FOLDER / "queue"),
        "control_folder": str(BROKER_FOLDER / "control"),
        # The transport polls its folder; the default second adds a second to every stage.
        "polling_interval": env_float("CELERY_BROKER_POLLING_INTERVAL", 0.1),
    }
else:
    CELERY_BROKER_TRANSPORT_OPTIONS = {
        # Above the longest task time limit, so a slow task is not delivered twice.
        "visibility_timeout": env_int("CELERY_VISIBILITY_TIMEOUT", 2 * 3600),
        # Ten priority levels, 0 served first: later stages of started runs go before new runs.
        "priority_steps": list(range(10)),
        "sep": ":",
        "queue_order_strategy": "priority",
    }
CELERY_TASK_DEFAULT_PRIORITY = 5
CELERY_TASK_ACKS_LATE = True
CELERY_TASK_REJECT_ON_WORKER_LOST = True
CELERY_WORKER_PREFETCH_MULTIPLIER = 1
CELERY_TASK_IGNORE_RESULT = True
CELERY_TASK_SERIALIZER = "json"
CELERY_ACCEPT_CONTENT = ["json"]
CELERY_TASK_DEFAULT_QUEUE = "pipeline"
CELERY_TASK_QUEUES = [Queue("pipeline"), Queue("agents"), Queue("maintenance"), Queue("notify")]
CELERY_TASK_ROUTES = {
    "pipeline.*": {"queue": "pipeline"},
    "maintenance.*": {"queue": "maintenance"},
    "workers.*": {"queue": "maintenance"},
    "notify.*": {"queue": "notify"},
    "escalations.*": {"queue": "maintenance"},
    "releases.*": {"queue": "maintenance"},
}
CELERY_TASK_ALWAYS_EAGER = env_bool("CELERY_TASK_ALWAYS_EAGER", False)
CELERY_BEAT_SCHEDULER = "django_celery_beat.schedulers:DatabaseScheduler"
CELERY_WORKER_HIJACK_ROOT_LOGGER = False
# Celery's Django fixup closes the database connection before and after every task unless this
# is set; with it, only after this many tasks. In between, Django's own rules (DB_CONN_MAX_AGE,
# health checks) apply before and after each task, as for a request (config/celery.py).
CELERY_DB_REUSE_MAX = env_int("CELERY_DB_REUSE_MAX", 1000)
CELERY_BROKER_CONNECTION_RETRY_ON_STARTUP = True

# --- Pipeline -------------------------------------------------------------------------
# How many times the Tester may send the Developer back before the run fails.
PIPELINE_MAX_ITERATIONS = env_int("PIPELINE_MAX_ITERATIONS", 3)
# A running stage writes a heartbeat this often; one silent for STAGE_STALE_SECONDS has no
# live task behind it and the reconciler re-enqueues it.
STAGE_HEARTBEAT_SECONDS = env_float("STAGE_HEARTBEAT_SECONDS", 2.0)
STAGE_STALE_SECONDS = env_float("STAGE_STALE_SECONDS", 30.0)
# A queued stage whose message has not been picked up for this long is re-enqueued.
STAGE_PICKUP_SECONDS = env_float("STAGE_PICKUP_SECONDS", 120.0)
RECONCILE_INTERVAL_SECONDS = env_float("RECONCILE_INTERVAL_SECONDS", 10.0)
# A stage hit by transient errors (outside services) is retried until it has been claimed this
# many times; then the run fails with the last error.
STAGE_MAX_ATTEMPTS = env_int("STAGE_MAX_ATTEMPTS", 5)
# Soft and hard time limits of stage tasks, in seconds. A Developer stage holds up to two agent
# turns of its role's time_limit_seconds (900 by default) plus checkout: the soft limit must
# leave room for them (AgentConfig refuses a time limit that does not fit).
STAGE_SOFT_TIME_LIMIT = env_int("STAGE_SOFT_TIME_LIMIT", 1900)
STAGE_TIME_LIMIT = env_int("STAGE_TIME_LIMIT", 1960)
if not STAGE_SOFT_TIME_LIMIT < STAGE_TIME_LIMIT:
    raise ImproperlyConfigured(
        f"STAGE_SOFT_TIME_LIMIT ({STAGE_SOFT_TIME_LIMIT}) must be below STAGE_TIME_LIMIT ({STAGE_TIME_LIMIT})."
    )
if CELERY_BROKER_TRANSPORT_OPTIONS.get("visibility_timeout", STAGE_TIME_LIMIT + 1) <= STAGE_TIME_LIMIT:
    raise ImproperlyConfigured(
        "CELERY_VISIBILITY_TIMEOUT must be above STAGE_TIME_LIMIT, or a slow stage is delivered twice."
    )

# Fairness: at most this many runs of one person run at once (0: no cap); the rest wait queued
# and start as the person's earlier runs end.
RUNS_PER_PERSON = env_int("RUNS_PER_PERSON", 4)
# Chaos testing only, off by default: ``<stage>:after_work`` makes a worker SIGKILL its own
# process group (the whole Celery node) once that stage's work is done but before its outcome
# is recorded, the worst moment for a crash (see pipeline.chaos_crash_point). Never in production.
CHAOS_CRASH_POINT = env_str("FACTORY_CRASH_POINT", "")
if CHAOS_CRASH_POINT and not CHAOS_CRASH_POINT.endswith(":after_work"):
    raise ImproperlyConfigured(f"FACTORY_CRASH_POINT must be <stage>:after_work, got {CHAOS_CRASH_POINT!r}.")
if CHAOS_CRASH_POINT and env_bool("PRODUCTION"):
    raise ImproperlyConfigured("FACTORY_CRASH_POINT is a chaos-testing hook; it is refused in production.")
# Benchmarks only (bench/engine.py): a module whose ``run(ctx)`` replaces the work of every
# stage, so the engine's own cost (claim, record, events) is measured alone. Never in production.
BENCH_STAGE_MODULE = env_str("BENCH_STAGE_MODULE", "")
if BENCH_STAGE_MODULE and env_bool("PRODUCTION"):
    raise RuntimeError("BENCH_STAGE_MODULE is for benchmarks; it must not be set in production.")

# --- Agents and workers ---------------------------------------------------------------
AGENT_BACKEND = env_str("AGENT_BACKEND", "scripted")
WORKER_RUNTIME = env_str("WORKER_RUNTIME", "process")
# Names this installation on its hosts; workers carry it. Empty: derived from FACTORY_HOME.
FACTORY_INSTANCE = env_str("FACTORY_INSTANCE", "")
WORKER_IMAGE = env_str("WORKER_IMAGE", "factory-worker:test")  # the docker runtime's image
WORKER_NETWORK_MODE = env_str("WORKER_NETWORK_MODE", "host")  # docker runtime: "host" or "none"
WORKER_EXEC_TIMEOUT = env_int("WORKER_EXEC_TIMEOUT", 600)
# At most this many live worker sessions (paused ones count); over it a stage waits and retries.
MAX_WORKERS = env_int("MAX_WORKERS", 8)
WORKER_QUOTA_RETRY_SECONDS = env_float("WORKER_QUOTA_RETRY_SECONDS", 15.0)
# A stage that waits retries after an outside service's Retry-After when it is longer, up to this.
STAGE_RETRY_MAX_SECONDS = env_float("STAGE_RETRY_MAX_SECONDS", 900.0)
# Beat sweeps of the worker lifecycle.
WORKER_SWEEP_INTERVAL_SECONDS = env_float("WORKER_SWEEP_INTERVAL_SECONDS", 30.0)
# The worker's API token (orchestrator-cli) lives this long; it is scoped to one run.
WORKER_TOKEN_TTL_SECONDS = env_int("WORKER_TOKEN_TTL_SECONDS", 2 * 3600)
# Where a worker reaches the API (channel 2), and the Python the CLI runs with inside it.
FACTORY_API_URL = env_str("FACTORY_API_URL", "http://127.0.0.1:8000")
# Resume the agent's own session only while its context is small and it was active recently.
AGENT_RESUME_MAX_CONTEXT_TOKENS = env_int("AGENT_RESUME_MAX_CONTEXT_TOKENS", 150_000)
AGENT_RESUME_MAX_AGE_SECONDS = env_int("AGENT_RESUME_MAX_AGE_SECONDS", 24 * 3600)
# Budgets in USD: per run and per project (AgentConfig.budget_usd caps one stage's agent).
RUN_BUDGET_USD = env_float("RUN_BUDGET_USD", 5.0)
PROJECT_BUDGET_USD = env_float("PROJECT_BUDGET_USD", 50.0)
# A message to a person pending (and due) this long has lost its delivery task: beat enqueues
# its chat's delivery again (a spare task is harmless: every attempt is claimed first).
OUTBOUND_REQUEUE_SECONDS = env_float("OUTBOUND_REQUEUE_SECONDS", 60.0)
# A question to a person stays open this long; then the run fails and its worker is ended.
ESCALATION_TTL_SECONDS = env_int("ESCALATION_TTL_SECONDS", 24 * 3600)
# The most a person may add to a run's budget in one answer.
MAX_BUDGET_INCREASE_USD = env_float("MAX_BUDGET_INCREASE_USD", 100.0)
# Used by the scripted agent only: how many developer iterations deliberately fail.
SCRIPTED_FAIL_TIMES = env_int("SCRIPTED_FAIL_TIMES", 0)
# Claude Code backend: the CLI inside the worker; the key reaches it only as an env variable.
ANTHROPIC_API_KEY = env_str("ANTHROPIC_API_KEY", "")
CLAUDE_BIN = env_str("CLAUDE_BIN", "claude")
# OpenAI-compatible backend: a chat-completions endpoint (base URL ends before /chat/completions).
LLM_BASE_URL = env_str("LLM_BASE_URL", "")
LLM_API_KEY = env_str("LLM_API_KEY", "")
LLM_MODEL = env_str("LLM_MODEL", "")

# --- Deploy ---------------------------------------------------------------------------
DEPLOY_HOST = env_str("DEPLOY_HOST", "127.0.0.1")
DEPLOY_PORT_MIN = env_int("DEPLOY_PORT_MIN", 20000)
DEPLOY_PORT_MAX = env_int("DEPLOY_PORT_MAX", 20999)
DEPLOY_HEALTH_TIMEOUT = env_float("DEPLOY_HEALTH_TIMEOUT", 20.0)
# Live releases are probed every interval (beat); one probe waits at most the timeout.
RELEASE_PROBE_INTERVAL_SECONDS = env_float("RELEASE_PROBE_INTERVAL_SECONDS", 10.0)
RELEASE_PROBE_TIMEOUT = env_float("RELEASE_PROBE_TIMEOUT", 2.0)
# The probe looks at this many live releases at once (each waits on a health answer and a CPU sample).
RELEASE_PROBE_THREADS = env_int("RELEASE_PROBE_THREADS", 16)
# A release found down is restarted this many times (backoff doubling from the base), then
# rolled back to the previous healthy release, then left to a person.
RELEASE_RESTART_LIMIT = env_int("RELEASE_RESTART_LIMIT", 2)
RELEASE_RESTART_BACKOFF_SECONDS = env_float("RELEASE_RESTART_BACKOFF_SECONDS", 1.0)
# Earlier releases kept on disk per project, for rollbacks without a rebuild.
RELEASES_KEPT = env_int("RELEASES_KEPT", 3)
# Where releases run: "local" (a process group on this machine, the embedded default) or "docker"
# (an image built from the project's Dockerfile, run as a container on the Docker engine).
DEPLOY_TARGET = env_str("DEPLOY_TARGET", "local")
if DEPLOY_TARGET not in ("local", "docker"):
    raise ImproperlyConfigured(f"DEPLOY_TARGET must be local or docker, not {DEPLOY_TARGET!r}.")
# docker target: the local image releases are built on (python3; pyTelegramBotAPI + requests for
# bots), and each release container's limits.
RELEASE_BASE_IMAGE = env_str("RELEASE_BASE_IMAGE", "factory-worker:test")
RELEASE_CPU_LIMIT = env_float("RELEASE_CPU_LIMIT", 1.0)
RELEASE_MEMORY_LIMIT_MB = env_int("RELEASE_MEMORY_LIMIT_MB", 256)
# Beat finishes releases left "stopping" and stops releases no live row accounts for.
RELEASES_RECONCILE_INTERVAL_SECONDS = env_float("RELEASES_RECONCILE_INTERVAL_SECONDS", 30.0)

# --- Names: Caddy in front of releases ---------------------------------------------------
# Releases are reachable as http://<slug>.<BASE_DOMAIN>/ through Caddy; empty: loopback ports.
BASE_DOMAIN = env_str("BASE_DOMAIN", "")
# Caddy's admin API, and the factory's own HTTP server in Caddy's config.
CADDY_ADMIN_URL = env_str("CADDY_ADMIN_URL", "http://127.0.0.1:2019")
CADDY_LISTEN = env_str("CADDY_LISTEN", ":80")
CADDY_SERVER = env_str("CADDY_SERVER", "factory")
CADDY_TIMEOUT_SECONDS = env_float("CADDY_TIMEOUT_SECONDS", 5.0)
# Automatic HTTPS (a real domain with DNS pointing here): URLs given to people are https.
CADDY_HTTPS = env_bool("CADDY_HTTPS", False)
# How often beat re-applies the routes (repairs a restarted Caddy within one interval).
ROUTES_SYNC_INTERVAL_SECONDS = env_float("ROUTES_SYNC_INTERVAL_SECONDS", 30.0)

# --- Telegram -------------------------------------------------------------------------
# The bot's token (from @BotFather); empty: the factory does not talk to Telegram.
TELEGRAM_BOT_TOKEN = env_str("TELEGRAM_BOT_TOKEN", "")
# The Bot API: a base URL (https://api.telegram.org, a local Bot API server) or telebot's format,
# {0} the token and {1} the method (tests point it at a loopback stand-in).
TELEGRAM_API_URL = bot_api_format(env_str("TELEGRAM_API_URL", "https://api.telegram.org"))
# Webhook mode: Telegram sends this in X-Telegram-Bot-Api-Secret-Token; empty refuses every call.
TELEGRAM_WEBHOOK_SECRET = env_str("TELEGRAM_WEBHOOK_SECRET", "")
# How long an invite code (`/start <code>`) stays valid.
TELEGRAM_INVITE_TTL_SECONDS = env_int("TELEGRAM_INVITE_TTL_SECONDS", 7 * 24 * 3600)
# One request to the Bot API may take this long (connect and read).
TELEGRAM_REQUEST_TIMEOUT_SECONDS = env_int("TELEGRAM_REQUEST_TIMEOUT_SECONDS", 10)

# --- Secrets --------------------------------------------------------------------------
# The vault's Fernet keys, comma-separated, newest first (older ones still decrypt: rotation with
# `manage.py secrets_rotate`). Required in production; the embedded default keeps a generated key
# in FACTORY_HOME/secrets.key (mode 0600).
SECRETS_ENCRYPTION_KEY = env_str("SECRETS_ENCRYPTION_KEY", "" if not env_bool("PRODUCTION") else None)
# Empty: FACTORY_HOME/secrets.key (read where FACTORY_HOME is when the key is needed).
SECRETS_KEY_FILE = env_str("SECRETS_KEY_FILE", "")
# Where project secrets are kept: `vault` (encrypted in the database), or `github_actions` (the
# vault, and a sealed copy in the project's GitHub repository's Actions secrets).
SECRET_STORE = env_str("SECRET_STORE", "vault")

# --- GitHub code host -----------------------------------------------------------------
# Where projects' code lives: `local` (bare repositories in FACTORY_HOME) or `github`; empty:
# `github` when GITHUB_ORG and a token or an App are set, else `local`.
CODE_HOST = env_str("CODE_HOST", "")
# The organization holding one private repository per project (<org>/<slug>).
GITHUB_ORG = env_str("GITHUB_ORG", "")
# Either a token (fine-grained or classic: repository administration, contents, pull requests,
# commit statuses, checks read, Actions secrets) ...
GITHUB_TOKEN = env_str("GITHUB_TOKEN", "")
# ... or a GitHub App installed on the organization: its id, its private key (PEM text, or a
# file) and the installation's id; installation tokens are minted and cached until shortly
# before they expire.
GITHUB_APP_ID = env_str("GITHUB_APP_ID", "")
GITHUB_APP_PRIVATE_KEY = env_str("GITHUB_APP_PRIVATE_KEY", "")
GITHUB_APP_PRIVATE_KEY_PATH = env_str("GITHUB_APP_PRIVATE_KEY_PATH", "")
GITHUB_APP_INSTALLATION_ID = env_str("GITHUB_APP_INSTALLATION_ID", "")
# The REST API (GitHub Enterprise: https://<host>/api/v3); git's smart HTTP base is derived from
# it unless GITHUB_GIT_URL says otherwise.
GITHUB_API_URL = env_str("GITHUB_API_URL", "https://api.github.com")
GITHUB_GIT_URL = env_str("GITHUB_GIT_URL", "")
GITHUB_TIMEOUT = env_int("GITHUB_TIMEOUT", 15)
# GitHub asks integrations to space out writes (secondary rate limits); 0: no spacing.
GITHUB_SECONDS_BETWEEN_WRITES = env_float("GITHUB_SECONDS_BETWEEN_WRITES", 1.0)
# Scaffolds on GitHub carry a workflow running the project's tests; the deploy waits for the
# check runs of the exact commit it deploys (polled with backoff, at most GITHUB_CHECKS_TIMEOUT).
GITHUB_CI_WORKFLOW = env_bool("GITHUB_CI_WORKFLOW", True)
GITHUB_CHECKS_POLL_SECONDS = env_int("GITHUB_CHECKS_POLL_SECONDS", 5)
GITHUB_CHECKS_MAX_BACKOFF = env_int("GITHUB_CHECKS_MAX_BACKOFF", 60)
GITHUB_CHECKS_WAIT_IN_STAGE = env_int("GITHUB_CHECKS_WAIT_IN_STAGE", 120)
GITHUB_CHECKS_TIMEOUT = env_int("GITHUB_CHECKS_TIMEOUT", 1800)
# Polling stops early when fewer REST calls than this are left in the hour (X-RateLimit-Remaining).
GITHUB_RATE_LIMIT_RESERVE = env_int("GITHUB_RATE_LIMIT_RESERVE", 100)
# Signs GitHub's webhook deliveries (check runs) to /github/webhook/ (X-Hub-Signature-256);
# empty: the endpoint answers 404 and the Deployer only polls.
GITHUB_WEBHOOK_SECRET = env_str("GITHUB_WEBHOOK_SECRET", "")

# --- Bots -----------------------------------------------------------------------------
# The Bot API a generated bot's release talks to (a base URL, or a format with {0} token, {1}
# method); default: the factory's own TELEGRAM_API_URL.
BOTS_API_URL = env_str("BOTS_API_URL", TELEGRAM_API_URL)
# A bot release must report a successful getUpdates within this many seconds of starting.
BOT_POLL_TIMEOUT = env_float("BOT_POLL_TIMEOUT", 20.0)

# --- Flower ---------------------------------------------------------------------------
# user:password for Flower's basic auth (`manage.py flower`); required when PRODUCTION=true.
FLOWER_BASIC_AUTH = env_str("FLOWER_BASIC_AUTH", "")
FLOWER_ADDRESS = env_str("FLOWER_ADDRESS", "127.0.0.1")
FLOWER_PORT = env_int("FLOWER_PORT", 5555)
PRODUCTION = env_bool("PRODUCTION", False)

# --- Operator console (admin overview, metrics, Flower link, log files) -------------------
# Prometheus metrics at /metrics, for a scraper that sends "Authorization: Bearer <token>";
# empty: the endpoint answers 404 (it does not exist).
METRICS_TOKEN = env_str("METRICS_TOKEN", "")
# Several web processes (gunicorn's workers) add up their request metrics through files here;
# prometheus_client reads the variable itself, at import. Empty: each process counts its own.
PROMETHEUS_MULTIPROC_DIR = env_str("PROMETHEUS_MULTIPROC_DIR", "")
if PROMETHEUS_MULTIPROC_DIR:
    Path(PROMETHEUS_MULTIPROC_DIR).mkdir(parents=True, exist_ok=True)
# Flower as an operator's browser reaches it (e.g. http://flower.example.com/), linked from
# admin; empty: no link.
FLOWER_URL = env_str("FLOWER_URL", "")
# Static files are found in the apps' static folders when collectstatic has not been run
# (runserver, the embedded default); after collectstatic WhiteNoise serves STATIC_ROOT.
WHITENOISE_USE_FINDERS = True
WHITENOISE_AUTOREFRESH = False
STATIC_ROOT.mkdir(parents=True, exist_ok=True)  # WhiteNoise warns at start when it is missing
# Times to the second, dates as 2026-01-31 (config/formats/en/formats.py).
FORMAT_MODULE_PATH = ["config.formats"]

# --- Logging --------------------------------------------------------------------------
LOG_JSON = env_bool("LOG_JSON", False)
LOG_LEVEL = env_str("LOG_LEVEL", "INFO")
# Every process also appends its lines as JSON to this file (web, worker and beat may share one:
# each line is one write); admin shows a run's lines from it, found by run_id. Empty: none.
LOG_FILE = env_str("LOG_FILE", "")
# Django's dictConfig is replaced by structlog's setup (see config/logging.py).
LOGGING_CONFIG = None
from config.logging import configure_logging  # noqa: E402

configure_logging(json=LOG_JSON, level=LOG_LEVEL, file=LOG_FILE or None)
