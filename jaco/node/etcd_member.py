"""Running an etcd member as a child process, and etcd's offline tools.

jacod supervises exactly one member. jacod reaches it through a unix socket in the data dir's
etcd-socket directory (mode 0700: only jacod's user may connect), without TLS; its client port
listens on 127.0.0.1 with mutual TLS for etcd's own tools; its peer port uses mutual TLS with
certificates from the cluster CA. The child gets
PR_SET_PDEATHSIG so that it never outlives a jacod that was killed.
"""

from __future__ import annotations

import asyncio
import ctypes
import ipaddress
import json
import logging
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from jaco.errors import JacoError, Unavailable
from jaco.node.config import ETCD_SOCKET, DataDir, NodeConfig

if TYPE_CHECKING:
    from jaco.model.etcd import Etcd

log = logging.getLogger("jacod")
_PR_SET_PDEATHSIG = 1
MAX_TXN_OPS = 2048
QUOTA_BACKEND_BYTES = 8 * 1024 * 1024 * 1024
WAL_BYTES = 64 * 1000 * 1000  # etcd preallocates each WAL file (wal.SegmentSizeBytes)
READY_POLL = 0.05  # seconds between two asks whether a starting member answers


class EtcdNotFound(JacoError):
    pass


def etcd_binary(name: str) -> str:
    path = shutil.which(name)  # made absolute below: etcd runs in a directory of its own
    if not path:
        raise EtcdNotFound(
            f"the `{name}` binary is not on PATH; install etcd (Debian: apt-get install "
            "etcd-server etcd-client)"
        )
    return os.path.abspath(path)


def dying_with_parent(
    cmd: list[str], sig: str = "TERM", when: bool = True
) -> tuple[list[str], Callable[[], None] | None]:
    """(command, preexec_fn) to start `cmd` so that it gets SIG`sig` when the thread that
    started it exits (PR_SET_PDEATHSIG); `cmd` unchanged and no preexec_fn unless `when`.
    util-linux's setpriv sets it and execs `cmd` (the same process). A preexec_fn only where
    setpriv is missing: Python code between fork and exec runs the interpreter's at-fork
    handlers, and in a process with gRPC's threads those abort the child (SIGABRT, seen when a
    test restarted SeaweedFS while a client streamed)."""
    if not when:
        return cmd, None
    setpriv = shutil.which("setpriv")
    if setpriv is not None:
        return [os.path.abspath(setpriv), f"--pdeathsig={sig}", "--", *cmd], None
    signum = signal.Signals[f"SIG{sig}"]

    def die_with_parent() -> None:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signum)

    return cmd, die_with_parent


def _listen_host(host: str) -> str:
    try:
        ipaddress.ip_address(host)
        return host.strip("[]")
    except ValueError:
        return "0.0.0.0"


def member_args(data: DataDir, config: NodeConfig) -> list[str]:
    tls = data.tls
    peer_listen = f"https://{_listen_host(config.advertise_host)}:{config.etcd_peer_port}"
    client = f"https://127.0.0.1:{config.etcd_client_port}"
    return [
        etcd_binary("etcd"),
        f"--name={config.name}",
        f"--data-dir={data.etcd_dir}",
        # the socket: a name in etcd's working directory, the data dir's etcd-socket (spawn)
        f"--listen-client-urls={client},unix://{ETCD_SOCKET}",
        f"--advertise-client-urls={client}",
        f"--listen-peer-urls={peer_listen}",
        f"--initial-advertise-peer-urls={config.peer_url}",
        f"--initial-cluster={config.initial_cluster}",
        f"--initial-cluster-state={config.initial_cluster_state}",
        f"--initial-cluster-token={config.cluster_id}",
        f"--cert-file={tls.cert}",
        f"--key-file={tls.key}",
        f"--trusted-ca-file={tls.ca}",
        "--client-cert-auth",
        f"--peer-cert-file={tls.cert}",
        f"--peer-key-file={tls.key}",
        f"--peer-trusted-ca-file={tls.ca}",
        "--peer-client-cert-auth",
        f"--max-txn-ops={MAX_TXN_OPS}",
        f"--quota-backend-bytes={QUOTA_BACKEND_BYTES}",
        # A member cut off from the others campaigns alone; without pre-vote each campaign
        # raises its term, and on its return the higher term deposes the leader: an election,
        # and requests timed out, for a node that merely came back (etcd 3.5 turns it on too).
        "--pre-vote",
        "--auto-compaction-mode=periodic",
        "--auto-compaction-retention=1h",
        "--logger=zap",
        "--log-outputs=stderr",
    ]


def prepare_socket_dir(data: DataDir) -> None:
    """The directory etcd listens in for jacod: made, or made private again (mode 0700: the
    socket has no TLS; whoever may enter the directory may read and write the whole store),
    and emptied of the socket a member killed before left, on which etcd 3.4 refuses to
    listen ("address already in use"). (A member that stops removes the socket by its name:
    no member of this data dir runs while jacod, holding its lock, starts the next.)"""
    data.etcd_socket_dir.mkdir(mode=0o700, exist_ok=True)
    os.chmod(data.etcd_socket_dir, 0o700)
    data.etcd_socket.unlink(missing_ok=True)


class EtcdMember:
    """One etcd child process and a client connected to it."""

    def __init__(self, data: DataDir, config: NodeConfig) -> None:
        self.data = data
        self.config = config
        self.process: asyncio.subprocess.Process | None = None
        self.client: Etcd | None = None
        self.asks = 0  # how many times start() asked whether the member answers

    async def spawn(self) -> None:
        """Start the etcd process, without waiting for it to answer."""
        cmd, preexec = dying_with_parent(member_args(self.data, self.config))
        prepare_socket_dir(self.data)
        sink = os.fdopen(
            os.open(self.data.etcd_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600), "ab"
        )
        try:
            self.process = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=subprocess.DEVNULL,
                stdout=sink,
                stderr=sink,
                preexec_fn=preexec,
                cwd=self.data.etcd_socket_dir,
            )
        finally:
            sink.close()
        log.info("etcd started (pid %s), logging to %s", self.process.pid, self.data.etcd_log)

    async def start(self, ready_timeout: float = 60.0) -> Etcd:
        """Spawn etcd (unless spawn() did) and wait until it answers; its client."""
        from jaco.model.etcd import Etcd  # gRPC: jacod loads it while etcd starts

        if self.process is None:
            await self.spawn()
        self.client = Etcd(self.data.etcd_socket)
        await self._wait_ready(ready_timeout)
        return self.client

    async def _wait_ready(self, timeout: float) -> None:
        assert self.process is not None
        started = time.monotonic()
        deadline = started + timeout
        while True:
            if self.process.returncode is not None:
                raise Unavailable(
                    f"etcd exited with code {self.process.returncode} during start: "
                    f"{self.last_log_error()} (log: {self.data.etcd_log})"
                )
            self.asks += 1
            if await self.answers():
                log.info(
                    "etcd answers (asked %d times in %.2f s)", self.asks, time.monotonic() - started
                )
                return
            if time.monotonic() > deadline:
                raise Unavailable(
                    f"etcd did not answer within {timeout:.0f}s; see {self.data.etcd_log}"
                )
            await asyncio.sleep(READY_POLL)

    async def answers(self) -> bool:
        """Whether the member answers a Status call now, asked on a channel of its own.

        Not on the client's: a gRPC channel whose connection was refused waits out a
        reconnect backoff (a second at first) before it tries again, so a member that comes
        up just after a refused attempt would be seen up to a second late: on every start
        of jacod, and so in every restore's time to READY (docs/benchmarks.md, stop 38)."""
        from jaco.model.etcd import Etcd

        probe = Etcd(self.data.etcd_socket)
        try:
            await probe.status(timeout=2)
            return True
        except Unavailable:
            return False
        finally:
            await probe.close()

    def last_log_error(self) -> str:
        """The last error etcd logged (its log is JSON lines), for one-line messages."""
        try:
            lines = self.data.etcd_log.read_text(errors="replace").splitlines()[-50:]
        except OSError:
            return "no log"
        for line in reversed(lines):
            try:
                entry = json.loads(line)
            except ValueError:
                continue
            if entry.get("level") in ("error", "fatal", "panic"):
                return f"{entry.get('msg')}: {entry.get('error', '')}".rstrip(": ")
        return lines[-1] if lines else "no log"

    async def stop(self, timeout: float = 20.0) -> None:
        if self.client is not None:
            await self.client.close()
            self.client = None
        process, self.process = self.process, None
        if process is None or process.returncode is not None:
            return
        process.terminate()
        try:
            await asyncio.wait_for(process.wait(), timeout)
        except TimeoutError:
            process.kill()
            await process.wait()
        log.info("etcd stopped (exit code %s)", process.returncode)


def tool_env() -> dict[str, str]:
    """etcdctl 3.4 speaks the v2 API if the environment says so, and then has no snapshots."""
    return {**os.environ, "ETCDCTL_API": "3"}


def restore_tool() -> str:
    """etcd's restore tool: etcdutl where there is one (etcd 3.5 and later), else etcdctl."""
    return shutil.which("etcdutl") or etcd_binary("etcdctl")


def snapshot_restore(
    snapshot: Path, data: DataDir, config: NodeConfig, pass_fds: tuple[int, ...] = ()
) -> None:
    """Restore a snapshot file into a fresh single-member etcd data dir.

    Only for a snapshot read out of a verified archive (jaco.archive.format): its SHA-256,
    and the one etcd appended to it, were checked as it was extracted, so etcd's tool is told
    not to read and hash it all again (`--skip-hash-check`, about 60 % of the tool's time).
    The tool dies with the thread that started it: a restore killed midway must not leave it
    writing into a directory the next attempt removes."""
    cmd = [
        restore_tool(),
        "snapshot",
        "restore",
        str(snapshot),
        f"--name={config.name}",
        f"--data-dir={data.etcd_dir}",
        f"--initial-cluster={config.initial_cluster}",
        f"--initial-cluster-token={config.cluster_id}",
        f"--initial-advertise-peer-urls={config.peer_url}",
        "--skip-hash-check",
    ]
    cmd, preexec = dying_with_parent(cmd)
    result = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=1800,
        check=False,
        pass_fds=pass_fds,
        preexec_fn=preexec,
        env=tool_env(),
    )
    if result.returncode != 0:
        raise JacoError(f"etcd could not restore the snapshot: {result.stderr.strip()[-400:]}")
