"""The flows' writes to the Prefect API against a real Prefect server that answers 503 first.

A Prefect server on SQLite answers 503 to a write that read first when it meets another
writer (SQLITE_BUSY_SNAPSHOT): a variable's update or delete, taking a slot of the backup
lock. Prefect's client then pauses 2 s before it asks again, and the run with it. Here an
HTTP forwarder in front of the real server answers the first writes it is told to with 503
(or drops them), as SQLite's busy server does, and passes everything else on. What tells the
two behaviours apart is not a clock but whose retry ran: flows.api_writes says it asked
again, Prefect's client says it will pause. The server is real and shared with the other
tests: it may answer 503 on its own too, so jaco's retries are counted at least, Prefect's
pauses exactly (none).
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

from flows.api_writes import set_variable, unset_variable
from flows.backup_flow import count_backups
from flows.locking import LEASE_SECONDS, cluster_lock
from infra.localcluster import wait_for


class BusyFirst:
    """An HTTP forwarder to the Prefect API at `api`. The first requests matching a key of
    `first` ("METHOD part-of-the-path") get the answers it lists, in order (a status, or None:
    the connection closed with no answer); everything else is passed on. It records every
    request's method, path and header names."""

    def __init__(self, api: str, first: dict[str, list[int | None]]) -> None:
        target = api.removesuffix("/").removesuffix("/api")
        self.seen: list[tuple[str, str, frozenset[str]]] = []
        self.bodies: list[tuple[str, str, bytes]] = []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _any(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                names = frozenset(k.lower() for k in self.headers)
                owner.seen.append((self.command, self.path, names))
                owner.bodies.append((self.command, self.path, body))
                planned = next(
                    (v for k, v in first.items() if _matches(k, self.command, self.path) and v),
                    [],
                )
                if planned:
                    answer = planned.pop(0)
                    if answer is None:
                        self.close_connection = True
                        return
                    self._reply(answer, b'{"exception_message":"Service Unavailable"}')
                    return
                headers = {k: v for k, v in self.headers.items() if k.lower() != "host"}
                passed = httpx.request(self.command, target + self.path, headers=headers,
                                       content=body)  # fmt: skip
                self._reply(passed.status_code, passed.content)

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

    def asked(self, key: str) -> list[str]:
        return [p for m, p, _ in self.seen if _matches(key, m, p)]

    def sent(self, key: str) -> list[Any]:
        return [json.loads(b) for m, p, b in self.bodies if _matches(key, m, p)]

    def headers(self, key: str) -> list[frozenset[str]]:
        return [h for m, p, h in self.seen if _matches(key, m, p)]

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()


def _matches(key: str, method: str, path: str) -> bool:
    wanted_method, part = key.split(" ", 1)
    return method == wanted_method and part in path


@contextlib.contextmanager
def _through(proxy: BusyFirst) -> Iterator[list[str]]:
    """This process's Prefect API is `proxy`; yields the debug lines of Prefect's client and
    of flows.api_writes."""
    import prefect.main  # noqa: F401 - configures Prefect's logging now, not under our handler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(f"{record.name}: {record.getMessage()}")

    keep = Keep(logging.DEBUG)
    loggers = [logging.getLogger(n) for n in ("prefect.client", "flows.api_writes")]
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
    return [line for line in lines if "; asking again in 0.05s" in line]


def _value(name: str) -> Any:
    from prefect.variables import Variable

    return Variable.get(name, default=None)


def test_prefects_own_unset_pauses_on_a_busy_server(prefect: str) -> None:
    """The finding, and the proof that these tests can see it: Prefect's Variable API through
    the same forwarder pauses (2 s) before it asks again."""
    from prefect.variables import Variable

    Variable.set("jaco_test_prefects_own", "held", overwrite=True)
    proxy = BusyFirst(prefect, {"DELETE /variables/": [503]})
    with _through(proxy) as lines:
        Variable.unset("jaco_test_prefects_own")
    assert _value("jaco_test_prefects_own") is None
    assert len(_paused_by_prefect(lines)) >= 1, lines


def test_a_busy_delete_is_asked_again_without_prefects_pause(prefect: str) -> None:
    from prefect.variables import Variable

    Variable.set("jaco_test_busy_delete", "held", overwrite=True)
    proxy = BusyFirst(prefect, {"DELETE /variables/": [503]})
    with _through(proxy) as lines:
        unset_variable("jaco_test_busy_delete")
    assert _value("jaco_test_busy_delete") is None
    deletes = proxy.asked("DELETE /variables/")
    assert deletes[:2] == ["/api/variables/name/jaco_test_busy_delete"] * 2
    assert len(_asked_again(lines)) >= 1, lines
    assert _paused_by_prefect(lines) == []
    # gone already: nothing to do, no error
    unset_variable("jaco_test_busy_delete")


def test_a_busy_update_is_asked_again_and_a_missing_variable_created(prefect: str) -> None:
    proxy = BusyFirst(prefect, {"PATCH /variables/": [503]})
    with _through(proxy) as lines:
        set_variable("jaco_test_busy_set", "first")  # PATCH: 503, then 404; POST creates
        set_variable("jaco_test_busy_set", "second")  # PATCH updates
    assert _value("jaco_test_busy_set") == "second"
    assert proxy.asked("PATCH /variables/")[:2] == ["/api/variables/name/jaco_test_busy_set"] * 2
    assert len(proxy.asked("POST /variables/")) >= 1
    assert len(_asked_again(lines)) >= 1 and _paused_by_prefect(lines) == [], lines


def test_what_prefect_retries_is_asked_again_a_broken_connection_too(prefect: str) -> None:
    from prefect.variables import Variable

    Variable.set("jaco_test_broken", "held", overwrite=True)
    proxy = BusyFirst(prefect, {"DELETE /variables/": [None, 502, 429]})
    with _through(proxy) as lines:
        unset_variable("jaco_test_broken")
    assert _value("jaco_test_broken") is None
    assert len(proxy.asked("DELETE /variables/")) >= 4
    again = [line for line in lines if "asking again" in line]
    assert ["broke the connection" in again[0], "502" in again[1], "429" in again[2]] == [
        True
    ] * 3, again


def test_the_writes_carry_the_headers_prefects_own_do(
    prefect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever Prefect's client adds to a request (auth, attribution: here a worker's, as a
    pool's worker passes it to its runs), these writes add too: a Prefect upgrade that adds a
    header shows here."""
    from prefect.variables import Variable

    monkeypatch.setenv("PREFECT__WORKER_NAME", "worker-1")
    proxy = BusyFirst(prefect, {})
    with _through(proxy):
        Variable.set("jaco_test_headers", "a", overwrite=True)
        Variable.set("jaco_test_headers", "b", overwrite=True)  # Prefect's PATCH
        set_variable("jaco_test_headers", "c")  # ours
    patches = proxy.headers("PATCH /variables/")  # Prefect's first, ours last
    prefects, ours = patches[0], patches[-1]
    assert "x-prefect-worker-name" in prefects
    assert ours == prefects, sorted(ours ^ prefects)
    assert _value("jaco_test_headers") == "c"


def test_the_backup_lock_is_taken_held_and_released_without_prefects_pause(
    prefect: str, tmp_path: Path
) -> None:
    """The backup flow's lock: its slot is taken, its holder variable written while held
    (here an update, the variable being there already), then both given back; a busy server
    at any of these does not keep the run waiting 2 s."""
    from prefect.variables import Variable

    holder_key = "jaco_backup_busytest_holder"
    Variable.set(holder_key, "{}", overwrite=True)
    _limit("jaco-backup-busytest", active=0)  # made here: made in the lock, Prefect's own write
    proxy = BusyFirst(
        prefect,
        {
            "POST /increment-with-lease": [503],
            "PATCH /variables/": [503],
            "DELETE /variables/": [503],
            "POST /decrement-with-lease": [503],
        },
    )
    with _through(proxy) as lines:
        with cluster_lock("jaco-backup-busytest", "busytest", 30, tmp_path, logging.getLogger()):
            assert _slots("jaco-backup-busytest") == 1
            heard = wait_for(
                lambda: json.loads(_value(holder_key)).get("heard_at"), 30, "the holder"
            )
            assert heard  # written by the lock's heartbeat, through the 503
    assert _value(holder_key) is None
    assert _slots("jaco-backup-busytest") == 0
    for key in ("POST /increment-with-lease", "PATCH /variables/", "DELETE /variables/",
                "POST /decrement-with-lease"):  # fmt: skip
        assert len(proxy.asked(key)) >= 2, key
    assert len(_asked_again(lines)) >= 4 and _paused_by_prefect(lines) == [], lines
    # what Prefect's client sent for the same take (no flow run here: no holder)
    take = {"names": ["jaco-backup-busytest"], "slots": 1, "mode": "concurrency",
            "lease_duration": LEASE_SECONDS}  # fmt: skip
    sent = proxy.sent("POST /increment-with-lease")
    assert len(sent) >= 2 and all(body == take for body in sent), sent


def test_a_lock_the_server_refuses_is_an_error_at_once(prefect: str, tmp_path: Path) -> None:
    """Only 423 (held by another run) is waited for; any other refusal fails the run now."""
    proxy = BusyFirst(prefect, {"POST /increment-with-lease": [422]})
    ran = []
    with (
        _through(proxy),
        pytest.raises(httpx.HTTPStatusError, match="422"),
        cluster_lock("jaco-backup-refused", "refused", 900, tmp_path, logging.getLogger()),
    ):
        ran.append(True)
    assert ran == [] and len(proxy.asked("POST /increment-with-lease")) == 1


def _limit(name: str, active: int) -> None:
    """The backup lock's concurrency limit, made before the test watches for pauses."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate

    with get_client(sync_client=True) as client:
        client.create_global_concurrency_limit(
            GlobalConcurrencyLimitCreate(name=name, limit=1, active_slots=active)
        )


def _slots(limit: str) -> int:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        return int(client.read_global_concurrency_limit_by_name(limit).active_slots)


def test_a_lock_whose_holder_went_silent_is_reclaimed_without_prefects_pause(
    prefect: str, tmp_path: Path
) -> None:
    """A slot still taken whose holder was last heard of long ago (a server that lost its
    leases) is freed, its holder variable deleted through a busy server, and the run goes on."""
    from prefect.variables import Variable

    _limit("jaco-backup-silent", active=1)
    silent = {"run_id": "x", "run_name": "gone", "started_at": "2026-01-01T00:00:00+00:00",
              "heard_at": "2026-01-01T00:00:00+00:00"}  # fmt: skip
    Variable.set("jaco_backup_silent_holder", json.dumps(silent), overwrite=True)
    proxy = BusyFirst(prefect, {"PATCH /concurrency_limits/": [503], "DELETE /variables/": [503]})
    ran = []
    with _through(proxy) as lines:
        with cluster_lock("jaco-backup-silent", "silent", 60, tmp_path, logging.getLogger()):
            ran.append(True)
    assert ran == [True]
    assert proxy.asked("DELETE /variables/")[0] == "/api/variables/name/jaco_backup_silent_holder"
    assert _value("jaco_backup_silent_holder") is None
    freed = proxy.sent("PATCH /concurrency_limits/jaco-backup-silent")
    assert freed[:2] == [{"active_slots": 0}] * 2
    assert len(_asked_again(lines)) >= 2 and _paused_by_prefect(lines) == [], lines


def test_the_backup_counter_is_counted_without_prefects_pause(prefect: str) -> None:
    from prefect.variables import Variable

    Variable.set("jaco_backups_busytest", 6, overwrite=True)
    proxy = BusyFirst(prefect, {"PATCH /variables/": [503]})
    with _through(proxy) as lines:
        assert count_backups("busytest") == 7
    assert _value("jaco_backups_busytest") == 7
    assert len(_asked_again(lines)) >= 1 and _paused_by_prefect(lines) == [], lines


def test_a_server_that_stays_busy_is_an_error_not_a_hang(prefect: str) -> None:
    """Past its patience (Prefect's own, here one retry's: 2 s) the write gives up with the
    server's answer."""
    from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

    proxy = BusyFirst(
        prefect, {"DELETE /variables/": [503] * 30}
    )  # no patience: it passes in ~25 s
    with (
        _through(proxy),
        temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 1}),
        pytest.raises(httpx.HTTPStatusError, match="503"),
    ):
        unset_variable("jaco_test_busy_forever")
    assert 3 <= len(proxy.asked("DELETE /variables/")) < 10
