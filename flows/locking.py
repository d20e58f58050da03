"""One backup of a cluster at a time, across every worker, and never blocked by a dead run.

With a Prefect server the lock is a global concurrency limit of 1 (`jaco-backup-<cluster>`)
held through a lease of LEASE_SECONDS that the holder renews while it lives: a run killed
with `kill -9` stops renewing and the server frees its slot within LEASE_SECONDS plus the
server's lease sweep (15 s by default). The holder also publishes who it is (a Prefect
variable, refreshed every HEARTBEAT_SECONDS): a run that must wait says once whom it waits
for, and if the server lost its leases (a restarted server keeps them in memory by default;
a server without its background services never sweeps them) a slot whose holder has not
been heard of for STALE_SECONDS is reclaimed, loudly.

Without a Prefect server (`jaco pipeline run` with no PREFECT_API_URL: each run brings its
own temporary server, which cannot coordinate anything) the lock is an flock on a file in
the local directory, released by the kernel the moment its process dies.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import fcntl
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flows.errors import PipelineError

LEASE_SECONDS = 60  # Prefect's minimum
HEARTBEAT_SECONDS = 20
STALE_SECONDS = 150
POLL_SECONDS = 2.0


def prefect_server() -> bool:
    from prefect.settings import get_current_settings

    return bool(get_current_settings().api.url)


@contextlib.contextmanager
def cluster_lock(
    name: str, cluster: str, wait_seconds: float, local_dir: Path, logger: Any
) -> Iterator[None]:
    """Hold lock `name` (e.g. jaco-backup-prod) for the block; wait at most `wait_seconds`."""
    if not prefect_server():
        with _file_lock(local_dir / ".locks" / f"{name}.lock", cluster, wait_seconds, logger):
            yield
        return
    with _prefect_lock(name, cluster, wait_seconds, logger):
        yield


@contextlib.contextmanager
def _file_lock(path: Path, cluster: str, wait_seconds: float, logger: Any) -> Iterator[None]:
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(path, "a+") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            logger.warning("waiting for %s", _describe(cluster, handle.read()))
            deadline = time.monotonic() + wait_seconds
            while True:
                try:
                    fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise PipelineError(
                            f"gave up after waiting {wait_seconds:.0f}s for the backup of "
                            f"{cluster} that holds {path}"
                        ) from None
                    time.sleep(1)
        handle.truncate(0)
        handle.write(json.dumps(_me()))
        handle.flush()
        yield


def _me() -> dict[str, str]:
    from prefect.runtime import flow_run

    return {
        "run_id": str(flow_run.id or ""),
        "run_name": str(flow_run.name or ""),
        "started_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "heard_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def _describe(cluster: str, raw: str | None) -> str:
    try:
        holder = json.loads(raw or "")
        return (
            f"the backup of {cluster} started at {holder['started_at']} by run "
            f"{holder['run_name'] or '?'} ({holder['run_id'] or 'no id'})"
        )
    except (ValueError, KeyError, TypeError):
        return f"the backup of {cluster} that holds its lock (holder unknown)"


def _variable(name: str) -> str:
    return name.replace("-", "_") + "_holder"


@contextlib.contextmanager
def _prefect_lock(name: str, cluster: str, wait_seconds: float, logger: Any) -> Iterator[None]:
    from prefect.client.schemas.objects import ConcurrencyLeaseHolder
    from prefect.runtime import flow_run
    from prefect.variables import Variable

    from flows.api_writes import api_write

    _ensure_limit(name)
    take: dict[str, Any] = {
        "names": [name], "slots": 1, "mode": "concurrency", "lease_duration": LEASE_SECONDS
    }  # fmt: skip
    if flow_run.id:  # what Prefect's increment_concurrency_slots_with_lease sends
        holder = ConcurrencyLeaseHolder(type="flow_run", id=flow_run.id)
        take["holder"] = holder.model_dump(mode="json")
    deadline = time.monotonic() + wait_seconds
    said = False
    while True:
        reply = api_write("POST", "/v2/concurrency_limits/increment-with-lease", take)
        if reply.status_code != 423:  # 423 Locked: someone holds it
            reply.raise_for_status()
            lease = str(reply.json()["lease_id"])
            break
        raw = Variable.get(_variable(name), default=None)
        raw_text = raw if isinstance(raw, str) else None
        if not said:
            logger.warning("waiting for %s", _describe(cluster, raw_text))
            said = True
        if _stale(raw_text):
            _reclaim(name, cluster, raw_text, logger)
        if time.monotonic() > deadline:
            raise PipelineError(
                f"gave up after waiting {wait_seconds:.0f}s for "
                f"{_describe(cluster, raw_text)}; if that run is dead, its slot frees itself "
                f"within {LEASE_SECONDS + 15}s"
            )
        time.sleep(POLL_SECONDS)
    try:
        with _heartbeat(_variable(name), lease, logger):
            yield
    finally:
        with contextlib.suppress(Exception):  # else the lease simply expires
            api_write("POST", "/v2/concurrency_limits/decrement-with-lease", {"lease_id": lease})


def _stale(raw: str | None) -> bool:
    try:
        heard = dt.datetime.fromisoformat(json.loads(raw or "")["heard_at"])
    except (ValueError, KeyError, TypeError):
        return False
    return (dt.datetime.now(dt.UTC) - heard).total_seconds() > STALE_SECONDS


def _reclaim(name: str, cluster: str, raw: str | None, logger: Any) -> None:
    """The holder stopped being heard of long ago, yet the slot is still taken: the server
    lost the lease (a restart). Free the slot so the cluster is backed up again."""
    from prefect.variables import Variable

    from flows.api_writes import api_write, unset_variable

    current = Variable.get(_variable(name), default=None)
    if current != raw:
        return  # someone else took it meanwhile
    logger.error(
        "reclaiming the lock of %s: no sign of life for over %ss", _describe(cluster, raw),
        STALE_SECONDS,
    )  # fmt: skip
    api_write("PATCH", f"/v2/concurrency_limits/{name}", {"active_slots": 0}).raise_for_status()
    unset_variable(_variable(name))


@contextlib.contextmanager
def _heartbeat(variable: str, lease: str, logger: Any) -> Iterator[None]:
    """While the block runs: renew the lease, and say who holds it and that it is alive."""
    from prefect import get_client

    from flows.api_writes import set_variable, unset_variable

    me = _me()
    stop = threading.Event()

    def beat() -> None:
        with get_client(sync_client=True) as client:
            while True:
                me["heard_at"] = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
                try:
                    client.renew_concurrency_lease(lease, LEASE_SECONDS)  # type: ignore[arg-type]
                except Exception as exc:  # noqa: BLE001 - reported, and the run goes on
                    logger.error(
                        "could not renew the lock's lease (%s): another run may start", exc
                    )
                with contextlib.suppress(Exception):  # a missed beat is not a failure
                    set_variable(variable, json.dumps(me))
                if stop.wait(HEARTBEAT_SECONDS):
                    return

    # The thread runs in this context: Prefect's settings (its API above all) are context-local.
    context = contextvars.copy_context()
    thread = threading.Thread(target=context.run, args=(beat,), name="lock-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(Exception):
            unset_variable(variable)


def _ensure_limit(name: str) -> None:
    """A global concurrency limit of 1 (created on first use)."""
    from prefect import get_client
    from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
    from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound

    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            with contextlib.suppress(ObjectAlreadyExists):
                client.create_global_concurrency_limit(
                    GlobalConcurrencyLimitCreate(name=name, limit=1)
                )
