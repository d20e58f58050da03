"""A real Prefect server on loopback (`prefect server start`, background services included),
for the tests and `make demo`, stopped by PID.

Its database lives in its own PREFECT_HOME; it sends no usage reports. `drain()` sends what
Prefect's background workers (logs, events) still hold while the API is still there: left
to the interpreter's exit, they would find the server gone and start a temporary one to
deliver to (a minute of hanging, then "Error logging to API").
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypedDict, Unpack

from infra.localcluster import BIN, wait_for
from infra.ports import free_port
from jaco.node.etcd_member import dying_with_parent

_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


@dataclass
class PrefectServer:
    home: Path
    port: int
    process: subprocess.Popen[bytes]
    kept: bool = False  # left running on purpose (`make demo --keep` recorded its PID)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/api"

    @property
    def ui(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def log(self) -> Path:
        return self.home / "server.log"

    def env(self) -> dict[str, str]:
        """The environment of a process that uses this server (a serve process, a worker)."""
        return {"PREFECT_API_URL": self.url, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}

    def wait_healthy(self, timeout: float = 180) -> None:
        """Until its API answers; a server that exited is not waited for."""

        def answers_or_exited() -> bool:
            if self.process.poll() is not None:
                return True
            with _no_proxy.open(f"{self.url}/health", timeout=2) as reply:
                return bool(reply.status == 200)

        wait_for(answers_or_exited, timeout, f"the Prefect server (see {self.log})")
        if self.process.poll() is not None:
            raise RuntimeError(f"the Prefect server exited; see {self.log}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def launch(
    home: Path,
    port: int | None = None,
    ui: bool = False,
    scheduler: bool = True,
    outlive_parent: bool = False,
) -> PrefectServer:
    """`prefect server start`, not waited for (`wait_healthy`)."""
    home.mkdir(parents=True, exist_ok=True)
    port = port or free_port()
    env = {
        **os.environ,
        "PREFECT_HOME": str(home),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_ENABLED": "true" if ui else "false",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
        "PREFECT_SERVER_SERVICES_SCHEDULER_ENABLED": "true" if scheduler else "false",
    }
    env.pop("PREFECT_API_URL", None)
    cmd, preexec = dying_with_parent(
        [str(BIN / "prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        when=not outlive_parent,
    )
    with open(home / "server.log", "ab") as log:
        process = subprocess.Popen(
            cmd, env=env, stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=preexec
        )
    return PrefectServer(home, port, process)


class LaunchOptions(TypedDict, total=False):
    """`launch`'s options, as `start` passes them on."""

    port: int | None
    ui: bool
    scheduler: bool
    outlive_parent: bool


def start(home: Path, **options: Unpack[LaunchOptions]) -> PrefectServer:
    """A server launched (`launch`'s options) and answering; stopped if it does not come up."""
    server = launch(home, **options)
    try:
        server.wait_healthy()
    except BaseException:
        server.stop()
        raise
    return server


def drain() -> None:
    """Send the logs and events Prefect's background workers still hold, and stop them."""
    from prefect.events.worker import EventsWorker
    from prefect.logging.handlers import APILogWorker

    APILogWorker.drain_all(timeout=30)
    EventsWorker.drain_all(timeout=30)


@contextlib.contextmanager
def using(server: PrefectServer) -> Iterator[None]:
    """This process (and every process it starts) talks to `server`; drained on the way out."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    previous = os.environ.get("PREFECT_API_URL")
    os.environ["PREFECT_API_URL"] = server.url
    try:
        with temporary_settings({PREFECT_API_URL: server.url}):
            yield
            drain()
    finally:
        if previous is None:
            os.environ.pop("PREFECT_API_URL", None)
        else:
            os.environ["PREFECT_API_URL"] = previous
