"""Names, not ports: the factory's routes in a Caddy server, driven through Caddy's admin API.

The factory keeps one HTTP server of its own in Caddy's config (`CADDY_SERVER`, listening on
`CADDY_LISTEN`, automatic HTTPS off unless a real domain is configured). Each live project has
one route, `@id` `factory-<slug>`, matching `<slug>.<BASE_DOMAIN>` and proxying to its release's
upstream; a last route answers 404 for names the factory does not serve. A new release becomes
reachable by replacing its project's route (PATCH by `@id`) once it is healthy. Caddy forgets
config given through the API when it restarts (unless told to persist it), so the desired routes
live in the database and `sync` re-applies them (a beat sweep).

Only this module speaks to Caddy; errors are sorted once: a refused connection, a timeout or a
5xx is transient, a 4xx is permanent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import requests
import structlog
from django.conf import settings

from config.errors import PermanentError, TransientError

log = structlog.get_logger(__name__)

ROUTE_PREFIX = "factory-"
# The factory's own routes (a slug never starts with "-"): the fallback, and in compose the admin
# site and Flower; sync leaves them alone.
INFRA_PREFIX = "factory--"
FALLBACK_ID = "factory--fallback"


@dataclass(frozen=True)
class Route:
    slug: str
    host: str
    upstream: str  # host:port


class ProxyRouter(Protocol):
    def ensure(self) -> None: ...

    def set_route(self, route: Route) -> None: ...

    def delete_route(self, slug: str) -> None: ...

    def routes(self) -> dict[str, Route]: ...


def host_for(slug: str) -> str:
    return f"{slug}.{settings.BASE_DOMAIN}"


def _route_json(route: Route) -> dict:
    return {
        "@id": ROUTE_PREFIX + route.slug,
        "match": [{"host": [route.host]}],
        "handle": [{"handler": "reverse_proxy", "upstreams": [{"dial": route.upstream}]}],
        "terminal": True,
    }


class CaddyRouter:
    def __init__(self, admin_url: str | None = None, *, listen: str | None = None, server: str | None = None):
        self.admin = (admin_url or settings.CADDY_ADMIN_URL).rstrip("/")
        self.listen = listen or settings.CADDY_LISTEN
        self.server = server or settings.CADDY_SERVER
        self.session = requests.Session()

    # --- the admin API, errors sorted once -------------------------------------------------
    def _call(self, method: str, path: str, body: object = None, *, missing_ok: bool = False) -> object:
        try:
            response = self.session.request(
                method, self.admin + path, json=body, timeout=settings.CADDY_TIMEOUT_SECONDS
            )
        except requests.RequestException as exc:
            raise TransientError(
                f"Caddy's admin API at {self.admin} is not reachable: {exc.__class__.__name__}."
            ) from exc
        if missing_ok and _is_missing(response):
            return None
        if response.status_code >= 500:
            raise TransientError(f"Caddy answered {response.status_code} to {method} {path}: {response.text[:200]}")
        if response.status_code >= 400:
            raise PermanentError(
                f"Caddy refused {method} {path} ({response.status_code}): {response.text[:300]}", code="caddy_refused"
            )
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError:
            return None

    @property
    def _server_path(self) -> str:
        return f"/config/apps/http/servers/{self.server}"

    # --- what the factory needs -------------------------------------------------------------
    def ensure(self) -> None:
        """Make sure the factory's server exists in Caddy's config (after a Caddy restart it may
        not), with its fallback route last; other servers and apps are left alone."""
        server = self._call("GET", self._server_path, missing_ok=True)
        if server is None:
            fresh = {
                "listen": [self.listen],
                "routes": [_fallback()],
                "automatic_https": {"disable": not settings.CADDY_HTTPS},
            }
            apps = self._call("GET", "/config/apps", missing_ok=True)
            if apps is None:
                self._call("POST", "/config/apps", {"http": {"servers": {self.server: fresh}}})
            elif self._call("GET", "/config/apps/http", missing_ok=True) is None:
                self._call("POST", "/config/apps/http", {"servers": {self.server: fresh}})
            else:
                self._call("POST", self._server_path, fresh)
            log.info("caddy_server_created", server=self.server, listen=self.listen)
            return
        if not any(r.get("@id") == FALLBACK_ID for r in server.get("routes") or []):
            self._call("POST", self._server_path + "/routes", _fallback())

    def set_route(self, route: Route) -> None:
        """Point `route.host` at `route.upstream`: replace the project's route, or insert it
        before the fallback."""
        body = _route_json(route)
        if self._call("GET", f"/id/{ROUTE_PREFIX}{route.slug}", missing_ok=True) is not None:
            self._call("PATCH", f"/id/{ROUTE_PREFIX}{route.slug}", body)
        else:
            self.ensure()
            self._call("PUT", self._server_path + "/routes/0", body)
        log.info("caddy_route_set", slug=route.slug, host=route.host, upstream=route.upstream)

    def delete_route(self, slug: str) -> None:
        self._call("DELETE", f"/id/{ROUTE_PREFIX}{slug}", missing_ok=True)

    def routes(self) -> dict[str, Route]:
        """The factory's project routes in Caddy now, by slug."""
        found = {}
        for raw in self._call("GET", self._server_path + "/routes", missing_ok=True) or []:
            rid = str(raw.get("@id") or "")
            if not rid.startswith(ROUTE_PREFIX) or rid.startswith(INFRA_PREFIX):
                continue  # not the factory's, or its own (the fallback, the admin site, Flower)
            try:
                host = raw["match"][0]["host"][0]
                upstream = raw["handle"][0]["upstreams"][0]["dial"]
            except (KeyError, IndexError, TypeError):
                host, upstream = "", ""
            found[rid[len(ROUTE_PREFIX) :]] = Route(slug=rid[len(ROUTE_PREFIX) :], host=host, upstream=upstream)
        return found

    def sync(self, desired: list[Route]) -> dict[str, list[str]]:
        """Make Caddy's factory routes exactly `desired`; returns what was set and removed."""
        self.ensure()
        current = self.routes()
        wanted = {r.slug: r for r in desired}
        changed = [slug for slug, r in wanted.items() if current.get(slug) != r]
        for slug in changed:
            self.set_route(wanted[slug])
        removed = [slug for slug in current if slug not in wanted]
        for slug in removed:
            self.delete_route(slug)
        return {"set": changed, "removed": removed}


def _fallback() -> dict:
    return {
        "@id": FALLBACK_ID,
        "handle": [
            {
                "handler": "static_response",
                "status_code": 404,
                "headers": {"Content-Type": ["text/plain; charset=utf-8"]},
                "body": "No service of this factory answers at this name.\n",
            }
        ],
        "terminal": True,
    }


def _is_missing(response: requests.Response) -> bool:
    """Caddy's answers for a path or @id that is not in its config (400 or 404)."""
    text = response.text
    return response.status_code in (400, 404) and ("unknown object ID" in text or "invalid traversal path" in text)


def get_router() -> CaddyRouter | None:
    """The configured router, or None when names are not in use (no BASE_DOMAIN: loopback ports)."""
    if not settings.BASE_DOMAIN or not settings.CADDY_ADMIN_URL:
        return None
    return CaddyRouter()
