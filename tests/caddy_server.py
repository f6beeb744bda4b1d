"""A real Caddy for tests: its own process, admin API and listener on free loopback ports."""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from pathlib import Path

import requests


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Caddy:
    def __init__(self, workdir: Path):
        self.workdir = workdir
        self.admin_port = free_port()
        self.http_port = free_port()
        self.proc: subprocess.Popen | None = None

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    @property
    def listen(self) -> str:
        return f"127.0.0.1:{self.http_port}"

    def start(self) -> Caddy:
        binary = shutil.which("caddy")
        if binary is None:
            raise RuntimeError("caddy is not installed (scripts/test installs it)")
        config = self.workdir / "caddy.json"
        # Admin on loopback, nothing persisted, no automatic HTTPS: the factory adds its server.
        config.write_text(
            json.dumps({"admin": {"listen": f"127.0.0.1:{self.admin_port}", "config": {"persist": False}}})
        )
        self.proc = subprocess.Popen(
            [binary, "run", "--config", str(config)],
            stdout=(self.workdir / "caddy.log").open("ab"),
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={"HOME": str(self.workdir), "XDG_DATA_HOME": str(self.workdir), "XDG_CONFIG_HOME": str(self.workdir)},
        )
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            try:
                requests.get(self.admin_url + "/config/", timeout=1)
                return self
            except requests.RequestException:
                time.sleep(0.1)
        raise RuntimeError("caddy did not start: " + (self.workdir / "caddy.log").read_text()[-500:])

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def restart(self) -> None:
        """A restarted Caddy forgets what the API gave it (persistence is off)."""
        self.stop()
        self.start()

    def get(self, host: str, path: str = "/") -> requests.Response:
        return requests.get(f"http://{self.listen}{path}", headers={"Host": host}, timeout=5)
