"""``manage.py demo "<description>"``: the whole product on this machine, no services needed.

Starts a real Celery worker and beat, creates a person and a project, shows every stage as it
happens, and ends with the URL of the running service (``Service running at …``) or, for a bot,
``Bot @name running``. ``--exit`` stops everything once the service has passed its checks;
without it the service runs until Ctrl-C.

Bots: unless ``TELEGRAM_API_URL`` is set, the factory's loopback Bot API stand-in is started
here and a stand-in token is put in the pool (or ``--bot-token`` is used), and a short exchange
with the live bot is shown. With ``TELEGRAM_API_URL`` pointing at another Bot API server and
``--bot-token``, that server and token are used and no exchange is invented.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from django.conf import settings
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError

from agents.models import Escalation
from agents.services import escalation_answer
from config.errors import AppError
from orchestrator import bots
from orchestrator.deploy import local
from orchestrator.maintenance import project_teardown
from orchestrator.telegram.standin import StandIn
from projects import people, selectors, services
from projects.models import PipelineRun, RunEvent
from projects.specs import ProjectSpec
from secrets_meta.bots import bot_token_value
from secrets_meta.models import BotToken

CELERY = [sys.executable, "-m", "celery", "-A", "config"]
DEMO_USER = {"id": 424242, "is_bot": False, "first_name": "Ada", "username": "ada_demo"}
STAGES = ["architect", "preparer", "developer", "tester", "deployer", "notify"]


class Command(BaseCommand):
    help = "Describe a service; watch the factory build, test and deploy it on this machine."

    def add_arguments(self, parser):
        parser.add_argument("description", help='e.g. "a web service that greets people by name"')
        parser.add_argument("--exit", action="store_true", help="stop everything once the service is healthy")
        parser.add_argument("--timeout", type=float, default=300.0, help="give up after this many seconds")
        parser.add_argument("--user", default="demo", help="the person the project belongs to")
        parser.add_argument("--bot-token", default="", help="run a bot as this bot (your own token)")

    def handle(self, *args, description: str, exit: bool, timeout: float, user: str, bot_token: str, **options):
        # Stopped with SIGTERM (kill, timeout, a service manager) as with Ctrl-C: everything it
        # started is stopped, nothing is left running.
        signal.signal(signal.SIGTERM, signal.default_int_handler)
        call_command("migrate", verbosity=0, interactive=False)
        logs = Path(settings.FACTORY_HOME) / "logs"
        logs.mkdir(parents=True, exist_ok=True)
        # The web app serves the API that agents call from inside workers (orchestrator-cli).
        api_url = self.api_url = f"http://127.0.0.1:{_free_port()}"
        env = {**os.environ, "FACTORY_API_URL": api_url}
        # Bots talk to a Bot API: Telegram's when TELEGRAM_API_URL says so, else the stand-in.
        self.standin = None
        if not os.environ.get("TELEGRAM_API_URL"):
            self.standin = StandIn().start()
            env |= {"TELEGRAM_API_URL": self.standin.api_url, "BOTS_API_URL": self.standin.base_url}
            # This process validates and adds bots itself: it talks to the stand-in too.
            settings.TELEGRAM_API_URL, settings.BOTS_API_URL = self.standin.api_url, self.standin.base_url
        procs: list[subprocess.Popen] = []
        project = None
        try:
            # Spawned inside the try: a SIGTERM between two spawns still stops the first.
            procs.append(
                self._spawn(
                    "web",
                    [
                        sys.executable,
                        "-m",
                        "gunicorn",
                        "config.wsgi",
                        "--bind",
                        api_url[7:],
                        "--workers",
                        "2",
                        "--worker-class",
                        "gthread",
                        "--threads",
                        "8",
                    ],
                    logs,
                    env,
                )
            )
            procs.append(
                self._spawn(
                    "worker",
                    [
                        *CELERY,
                        "worker",
                        "-Q",
                        "pipeline,agents,maintenance,notify",
                        "--concurrency=2",
                        "-n",
                        f"demo-{os.getpid()}@%h",
                        "--without-gossip",
                        "--without-mingle",
                        "--loglevel=INFO",
                    ],
                    logs,
                    env,
                )
            )
            procs.append(
                self._spawn(
                    "beat", [*CELERY, "beat", f"--schedule={logs / 'beat-schedule'}", "--loglevel=INFO"], logs, env
                )
            )
            person = people.person_ensure(username=user)
            try:
                project, run = services.project_create(owner=person, description=description)
            except AppError as exc:
                raise CommandError(exc.message) from exc
            self._bot_token(project.id, bot_token)
            self.stdout.write(f"Project #{project.id}, run #{run.id}: {description}")
            self.stdout.write(f"API and admin at {api_url}/ ; logs in {logs}")
            run = self._watch(run.id, timeout, procs)
            self.stdout.write("")
            if run.status != PipelineRun.Status.SUCCEEDED:
                self.stdout.write(run.result_message or f"Run #{run.id} ended {run.status}: {run.error_message}")
                raise CommandError(f"The run {run.status}.")
            project.refresh_from_db()
            if project.kind == "telegram_bot":
                self._verify_bot(project.id)
            else:
                self._verify(project.id)
                self.stdout.write(run.result_message.splitlines()[-1])
            if not exit:
                self.stdout.write("Press Ctrl-C to stop the service.")
                while True:
                    time.sleep(3600)
        except KeyboardInterrupt:
            self.stdout.write("\nStopping.")
        finally:
            if project is not None:
                project_teardown(project_id=project.id)
            for proc in procs:
                _stop(proc)
            if self.standin is not None:
                self.standin.stop()

    def _bot_token(self, project_id: int, token: str) -> None:
        """A bot needs a token: the person's own (--bot-token), else one from the pool; with the
        stand-in and an empty pool, a stand-in bot is put in the pool first."""
        if token:
            try:
                bot = bots.own_token_intake(project_id, token, actor="demo")
            except AppError as exc:
                raise CommandError(f"The bot token was refused: {exc.message}") from exc
            self.stdout.write(f"Your own bot @{bot.username} will run this project (if it is a bot).")
        elif self.standin is not None:
            # The pool's bots from an earlier demo in this home were served by that demo's
            # stand-in, which is gone: this one serves them, so they still pass getMe.
            free = BotToken.objects.filter(status=BotToken.Status.FREE)
            served = [self.standin.add_bot(row.username, token=t) for row in free if (t := bot_token_value(row))]
            if not served:
                bots.pool_add(self.standin.add_bot(f"factory_demo_{os.getpid() % 10000}_bot"), actor="demo")

    def _reply(self, token: str, before: int, timeout: float = 15.0) -> str:
        """The bot's first message to the demo's person after the `before` it had sent already."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            sent = self.standin.sent(token, chat_id=DEMO_USER["id"])
            if len(sent) > before:
                return str(sent[before].get("text", ""))
            time.sleep(0.05)
        return ""

    def _verify_bot(self, project_id: int) -> None:
        """Show a short exchange with the live bot (through the stand-in only: nothing is invented
        on a real Bot API), then the bot's name."""
        live = selectors.live_deployment(project_id=project_id)
        username = live.url.rstrip("/").rsplit("/", 1)[-1]
        spec = ProjectSpec.model_validate(live.project.spec)
        bot = bots.bot_for_project(project_id=project_id)
        if self.standin is not None and bot is not None:
            for check in spec.conversation:
                before = len(self.standin.sent(bot.token, chat_id=DEMO_USER["id"]))
                self.standin.say(bot.token, check.send, user=DEMO_USER)
                text = self._reply(bot.token, before)
                self.stdout.write(f"you: {check.send} → bot: {text or '(no reply)'}")
                if check.expect_contains not in text:
                    raise CommandError("The bot does not answer what was asked for.")
        self.stdout.write(f"Bot @{username} running")

    def _spawn(self, name: str, argv: list[str], logs: Path, env: dict[str, str]) -> subprocess.Popen:
        with open(logs / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
                cwd=settings.BASE_DIR,
                env=env,
            )
        proc.name = name  # type: ignore[attr-defined]
        return proc

    def _watch(self, run_id: int, timeout: float, procs: list[subprocess.Popen]) -> PipelineRun:
        """Print each event as it is recorded, with the elapsed time; return the finished run."""
        started, last_id, status_line = time.monotonic(), 0, False
        tty = self.stdout.isatty()
        while True:
            elapsed = time.monotonic() - started
            for event in selectors.run_events_after(run_id=run_id, after_id=last_id):
                last_id = event.id
                if status_line:
                    self.stdout.write("\r\033[K", ending="")
                    status_line = False
                self.stdout.write(f"[{elapsed:6.1f}s] {_describe(event)}")
                if event.type == RunEvent.Type.ESCALATION_RAISED:
                    self._ask(event.payload["escalation_id"])
            run = PipelineRun.objects.get(id=run_id)
            if run.is_finished and run.result_message:
                return run
            for proc in procs:
                if proc.poll() is not None:
                    raise CommandError(f"The {proc.name} process exited with code {proc.returncode}; see its log.")
            if elapsed > timeout:
                raise CommandError(f"The run did not finish within {timeout:.0f}s (it is at {run.current_stage}).")
            if tty and run.current_stage:
                n = STAGES.index(run.current_stage) + 1
                self.stdout.write(f"\r\033[K  [{n}/{len(STAGES)}] {run.current_stage} … {elapsed:5.1f}s", ending="")
                self.stdout.flush()
                status_line = True
            time.sleep(0.2)

    def _ask(self, escalation_id: int) -> None:
        """The run waits for a person: on a terminal, ask here; otherwise say where to answer."""
        self.stdout.write(
            f"  The run waits for an answer: in admin at {self.api_url}/admin/agents/escalation/{escalation_id}/change/"
        )
        if not sys.stdin.isatty():
            return
        reply = input("  Your answer (or /cancel): ").strip()
        action = "cancel" if reply == "/cancel" else "guidance"
        owner = Escalation.objects.select_related("run__project__owner").get(id=escalation_id).run.project.owner
        try:
            escalation_answer(escalation_id=escalation_id, user=owner, action=action, answer=reply)
        except AppError as exc:
            self.stdout.write(f"  Not accepted: {exc.message}")

    def _verify(self, project_id: int) -> None:
        """Show that the live service answers its health check and what the description asked for."""
        live = selectors.live_deployment(project_id=project_id)
        project = live.project
        internal = f"http://{settings.DEPLOY_HOST}:{live.port}/"  # the release itself, whatever its name
        status, body = local.http(internal + "health")
        self.stdout.write(f"GET /health -> {status} {body.strip()}")
        spec = ProjectSpec.model_validate(project.spec)
        for check in spec.acceptance:
            if check.path == "/health":
                continue
            result = local.run_acceptance(internal, [check])[0]
            self.stdout.write(f"{result.detail.strip()} [{'ok' if result.ok else 'FAILED'}]")
            if not result.ok:
                raise CommandError("The service does not answer what was asked for.")


def _describe(event: RunEvent) -> str:
    p = event.payload
    match event.type:
        case RunEvent.Type.STAGE_STARTED:
            it = f" (iteration {p.get('iteration')})" if event.stage in ("developer", "tester") else ""
            return f"{event.stage} started{it}"
        case RunEvent.Type.STAGE_SUCCEEDED:
            return f"{event.stage} done in {p.get('seconds') or 0:.1f}s"
        case RunEvent.Type.STAGE_FAILED:
            return f"{event.stage} FAILED: {p.get('message')}"
        case RunEvent.Type.TESTS_FAILED:
            return f"tests failed: {p.get('message')}"
        case RunEvent.Type.DEPLOYED:
            return "release is live and healthy"
        case RunEvent.Type.ESCALATION_RAISED:
            return f"QUESTION for you: {p.get('question')}"
        case RunEvent.Type.ESCALATION_ANSWERED:
            return f"answered ({p.get('action')}); going on"
        case RunEvent.Type.AGENT_PROGRESS:
            return f"agent: {p.get('message')}"
        case RunEvent.Type.STAGE_WAITING:
            return f"{event.stage} waits: {p.get('reason')}"
        case RunEvent.Type.NOTIFIED:
            return "person notified"
        case _:
            return event.get_type_display()


def _stop(proc: subprocess.Popen, grace: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)  # the main process shuts its pool down warmly
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
