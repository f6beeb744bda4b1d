"""The Caddy router against a real Caddy: routes by name, swaps, removal, repair after a restart."""

from __future__ import annotations

import shutil
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from config.errors import TransientError
from orchestrator import maintenance
from orchestrator.deploy.caddy import CaddyRouter, Route
from projects.models import Deployment, PipelineRun, Project
from tests.caddy_server import Caddy, free_port

pytestmark = pytest.mark.skipif(shutil.which("caddy") is None, reason="caddy is not installed")


class _Upstream:
    def __init__(self, text: str):
        body = text.encode()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):  # noqa: N802
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.addr = f"127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def caddy(tmp_path, settings):
    server = Caddy(tmp_path).start()
    settings.BASE_DOMAIN = "factory.test"
    yield server
    server.stop()


@pytest.fixture
def upstreams():
    made = []

    def make(text):
        made.append(_Upstream(text))
        return made[-1]

    yield make
    for upstream in made:
        upstream.close()


def router_for(caddy: Caddy) -> CaddyRouter:
    return CaddyRouter(caddy.admin_url, listen=caddy.listen, server="factory")


def test_a_route_sends_the_project_name_to_its_release(caddy, upstreams):
    one = upstreams("release one")
    router = router_for(caddy)
    router.set_route(Route(slug="greeter", host="greeter.factory.test", upstream=one.addr))
    answer = caddy.get("greeter.factory.test")
    assert answer.status_code == 200 and answer.text == "release one"


def test_an_unknown_name_gets_a_404_not_another_project(caddy, upstreams):
    router = router_for(caddy)
    router.set_route(Route(slug="greeter", host="greeter.factory.test", upstream=upstreams("x").addr))
    answer = caddy.get("nobody.factory.test")
    assert answer.status_code == 404 and "No service" in answer.text


def test_setting_a_route_again_swaps_the_release_in_place(caddy, upstreams):
    one, two = upstreams("release one"), upstreams("release two")
    router = router_for(caddy)
    router.set_route(Route(slug="greeter", host="greeter.factory.test", upstream=one.addr))
    router.set_route(Route(slug="greeter", host="greeter.factory.test", upstream=two.addr))
    assert caddy.get("greeter.factory.test").text == "release two"
    assert list(router.routes()) == ["greeter"]


def test_a_deleted_route_no_longer_answers_and_deleting_twice_is_fine(caddy, upstreams):
    router = router_for(caddy)
    router.set_route(Route(slug="greeter", host="greeter.factory.test", upstream=upstreams("x").addr))
    router.delete_route("greeter")
    router.delete_route("greeter")
    assert caddy.get("greeter.factory.test").status_code == 404
    assert router.routes() == {}


def test_sync_repairs_a_restarted_caddy_and_removes_what_is_not_wanted(caddy, upstreams):
    one, two = upstreams("one"), upstreams("two")
    router = router_for(caddy)
    router.set_route(Route(slug="stale", host="stale.factory.test", upstream=one.addr))
    desired = [Route(slug="greeter", host="greeter.factory.test", upstream=two.addr)]
    assert router.sync(desired) == {"set": ["greeter"], "removed": ["stale"]}
    caddy.restart()
    # Caddy forgot the factory's server: nothing listens on its port until the next sync.
    with pytest.raises(requests.ConnectionError):
        caddy.get("greeter.factory.test")
    assert router.sync(desired) == {"set": ["greeter"], "removed": []}
    assert caddy.get("greeter.factory.test").text == "two"
    assert router.sync(desired) == {"set": [], "removed": []}


def test_other_servers_in_caddy_are_left_alone(caddy, upstreams):
    other = {"listen": [f"127.0.0.1:{free_port()}"], "routes": [], "automatic_https": {"disable": True}}
    requests.post(caddy.admin_url + "/config/apps", json={"http": {"servers": {"theirs": other}}}, timeout=5)
    router_for(caddy).set_route(Route(slug="greeter", host="greeter.factory.test", upstream=upstreams("x").addr))
    servers = requests.get(caddy.admin_url + "/config/apps/http/servers", timeout=5).json()
    assert set(servers) == {"theirs", "factory"}


def test_an_unreachable_caddy_is_a_transient_error():
    router = CaddyRouter(f"http://127.0.0.1:{free_port()}", listen="127.0.0.1:1", server="factory")
    with pytest.raises(TransientError):
        router.set_route(Route(slug="greeter", host="greeter.factory.test", upstream="127.0.0.1:1"))


@pytest.fixture
def routed(caddy, settings):
    settings.CADDY_ADMIN_URL = caddy.admin_url
    settings.CADDY_LISTEN = caddy.listen
    settings.CADDY_SERVER = "factory"
    return caddy


def _live_web_release(user, slug: str, port: int) -> Deployment:
    project = Project.objects.create(owner=user, description="greets", slug=slug, kind="web_service", name=slug)
    run = PipelineRun.objects.create(project=project, kind="create")
    return Deployment.objects.create(project=project, run=run, port=port, commit_sha="c" * 40, status="live")


@pytest.mark.django_db
def test_the_sweep_routes_live_releases_by_name_and_drops_stopped_ones(routed, upstreams, user):
    one = upstreams("greeter here")
    deployment = _live_web_release(user, "greeter", int(one.addr.rsplit(":", 1)[1]))
    assert maintenance.routes_sync() == 1
    assert routed.get("greeter.factory.test").text == "greeter here"
    assert maintenance.routes_sync() == 0  # nothing to change: one sweep's work is idempotent
    Deployment.objects.filter(id=deployment.id).update(status="stopped")
    assert maintenance.routes_sync() == 1
    assert routed.get("greeter.factory.test").status_code == 404


@pytest.mark.django_db
def test_tearing_a_project_down_removes_its_route(routed, upstreams, user):
    one = upstreams("greeter here")
    deployment = _live_web_release(user, "greeter", int(one.addr.rsplit(":", 1)[1]))
    maintenance.routes_sync()
    maintenance.project_teardown(project_id=deployment.project_id)
    assert routed.get("greeter.factory.test").status_code == 404


@pytest.mark.django_db
def test_without_a_base_domain_the_sweep_does_nothing(settings):
    settings.BASE_DOMAIN = ""
    assert maintenance.routes_sync() == 0
