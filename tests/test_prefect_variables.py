"""The flows' writes of Prefect variables against a real Prefect server that answers 503 first.

A Prefect server on SQLite answers 503 to a variable's update or delete that meets another
writer (SQLITE_BUSY_SNAPSHOT); Prefect's client then pauses 2 s before it asks again, and the
backup flow's lock release did, at the end of runs. Here an HTTP forwarder in front of the
real server answers the first write it is told to with 503, as SQLite's busy server does,
and passes everything else on. What tells the two behaviours apart is not a clock but whose
retry ran: flows.variables says it asked again, Prefect's client says it will pause.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import logging
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from flows.locking import cluster_lock
from flows.variables import set_variable, unset_variable
from infra.localcluster import wait_for

PRETEND_BUSY = 503


class BusyFirst:
    """An HTTP forwarder to the Prefect API at `api` that answers 503 to the first `busy`
    requests whose method is `method` (and path contains `path`), and records every request's
    method and path."""

    def __init__(self, api: str, method: str, busy: int = 1, path: str = "/variables/") -> None:
        target = api.removesuffix("/").removesuffix("/api")
        self.seen: list[tuple[str, str]] = []
        self._busy = busy
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                owner.seen.append((self.command, self.path))
                if self.command == method and path in self.path and owner._busy > 0:
                    owner._busy -= 1
                    self._reply(PRETEND_BUSY, b'{"exception_message":"Service Unavailable"}')
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                answer = httpx.request(self.command, target + self.path, headers=headers,
                                       content=body)  # fmt: skip
                self._reply(answer.status_code, answer.content)

            def _reply(self, status: int, content: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(content)))
                self.end_headers()
                self.wfile.write(content)

            do_GET = do_POST = do_PATCH = do_DELETE = do_PUT = _any

            def log_message(self, *args: Any) -> None:
                pass

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}/api"
        threading.Thread(target=self._server.serve_forever, daemon=True).start()

    def asked(self, method: str) -> list[str]:
        return [p for m, p in self.seen if m == method and "/variables/" in p]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


@contextlib.contextmanager
def _through(proxy: BusyFirst) -> Iterator[list[str]]:
    """This process's Prefect API is `proxy`; yields the debug lines of Prefect's client and
    of flows.variables."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.name}: {record.getMessage()}")

    keep = Keep(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("prefect.client", "flows.variables")]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.addHandler(keep)
        lg.setLevel(logging.DEBUG)
    try:
        with temporary_settings({PREFECT_API_URL: proxy.url}):
            yield lines
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.removeHandler(keep)
            lg.setLevel(level)
        proxy.close()


def _paused_by_prefect(lines: list[str]) -> list[str]:
    return [line for line in lines if "Another attempt will be made" in line]


def _asked_again(lines: list[str]) -> list[str]:
    return [line for line in lines if "busy (503); asking again in 0.05s" in line]


def _value(name: str) -> Any:
    from prefect.variables import Variable

    return Variable.get(name, default=None)


def test_a_busy_delete_is_asked_again_without_prefects_pause(prefect: str) -> None:
    from prefect.variables import Variable

    Variable.set("jaco_test_busy_delete", "held", overwrite=True)
    proxy = BusyFirst(prefect, "DELETE")
    with _through(proxy) as lines:
        unset_variable("jaco_test_busy_delete")
    assert _value("jaco_test_busy_delete") is None
    assert proxy.asked("DELETE") == ["/api/variables/name/jaco_test_busy_delete"] * 2
    assert len(_asked_again(lines)) == 1, lines
    assert _paused_by_prefect(lines) == []
    # gone already: nothing to do, no error
    unset_variable("jaco_test_busy_delete")


def test_a_busy_update_is_asked_again_and_a_missing_variable_created(prefect: str) -> None:
    proxy = BusyFirst(prefect, "PATCH", busy=1)
    with _through(proxy) as lines:
        set_variable("jaco_test_busy_set", "first")  # PATCH: 503, then 404; POST creates
        set_variable("jaco_test_busy_set", "second")  # PATCH updates
        set_variable("jaco_test_busy_count", 7)
    assert _value("jaco_test_busy_set") == "second"
    assert _value("jaco_test_busy_count") == 7
    assert proxy.asked("PATCH")[:2] == ["/api/variables/name/jaco_test_busy_set"] * 2
    assert len(proxy.asked("POST")) == 2  # each variable created once
    assert len(_asked_again(lines)) == 1 and _paused_by_prefect(lines) == [], lines


def test_the_backup_lock_is_released_without_prefects_pause(prefect: str, tmp_path: Path) -> None:
    """The backup flow's lock: its holder variable is written while held and deleted on
    release; a busy server at release does not keep the run waiting 2 s."""
    proxy = BusyFirst(prefect, "DELETE")
    with _through(proxy) as lines:
        with cluster_lock("jaco-backup-busytest", "busytest", 30, tmp_path, logging.getLogger()):
            holder = wait_for(lambda: _value("jaco_backup_busytest_holder"), 30, "the holder")
            assert json.loads(holder)["heard_at"]  # written by the lock's heartbeat
    assert _value("jaco_backup_busytest_holder") is None
    assert proxy.asked("DELETE") == ["/api/variables/name/jaco_backup_busytest_holder"] * 2
    assert len(_asked_again(lines)) == 1 and _paused_by_prefect(lines) == [], lines


def test_a_server_that_stays_busy_is_an_error_not_a_hang(
    prefect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Past its patience the write gives up with the server's answer (here kept short)."""
    import flows.variables

    monkeypatch.setattr(flows.variables, "PATIENCE", 0.3)
    proxy = BusyFirst(prefect, "DELETE", busy=30)  # with no patience, it passes in ~25 s
    with _through(proxy), pytest.raises(httpx.HTTPStatusError, match="503"):
        unset_variable("jaco_test_busy_forever")
    assert 2 <= len(proxy.asked("DELETE")) < 10
