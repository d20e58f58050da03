"""The drill, inside the sandbox: restore → start jacod → READY → checks → (rejoin) → report.

Runs as `python -m jaco.drill.agent` under bubblewrap (or in a container), with the decrypted
archive, its verified meta.json and an operator token from before the backup bound read-only
under /input. Prints one JSON report on its last line of stdout: every check with pass/fail and
detail, and the measured timings. Everything it starts lives and dies in the sandbox. The
restored node is checked through its API only (the same token an operator would use), never
with the node's own etcd credentials.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from jaco.archive.meta import BackupMeta
from jaco.client.connection import Client, connect_info
from jaco.errors import JacoError, Unauthenticated
from jaco.model.tokens import parse_token
from jaco.node.bootstrap import Ports, join_cluster
from jaco.node.config import DataDir
from jaco.node.restore import restore
from jaco.v1 import jaco_pb2 as pb

DATA = Path(os.environ.get("JACO_DATA_DIR", "/var/lib/jaco"))


@dataclass
class Check:
    name: str
    ok: bool
    detail: str


class Drill:
    def __init__(self, archive: Path, meta: BackupMeta, token: str) -> None:
        self.archive = archive
        self.meta = meta
        self.token = token
        self.checks: list[Check] = []
        self.timings: dict[str, float] = {}
        self.daemons: list[subprocess.Popen[bytes]] = []

    def check(self, name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        try:
            ok, detail = fn()
        except JacoError as exc:
            ok, detail = False, exc.message
        except Exception as exc:  # noqa: BLE001 - a drill reports, it does not crash
            ok, detail = False, f"{type(exc).__name__}: {exc}"
        self.checks.append(Check(name, ok, detail))
        return ok

    def start_jacod(self, name: str, listen: str) -> None:
        log = open(DATA / f"{name}.log", "ab")  # noqa: SIM115 - handed to the daemon
        self.daemons.append(
            subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "jaco.server.daemon",
                    "--name",
                    name,
                    "--data-dir",
                    str(DATA / name),
                    "--listen",
                    listen,
                ],
                stdout=log,
                stderr=log,
            )
        )
        log.close()

    def client(self, server: str) -> Client:
        return Client(connect_info(server, self.token), timeout=30)

    def wait_ready(self, server: str, names: list[str], timeout: float = 120) -> tuple[bool, str]:
        deadline = time.monotonic() + timeout
        last = ""
        while time.monotonic() < deadline:
            try:
                with self.client(server) as client:
                    nodes = client.call("ClusterStatus", pb.ClusterStatusRequest()).nodes
                states = {n.name: n.state for n in nodes}
                if all(states.get(n) == "READY" for n in names):
                    return True, f"{', '.join(names)} READY"
                last = str(states)
            except Unauthenticated:
                raise  # an authoritative answer: the node serves; waiting will not help
            except JacoError as exc:
                last = exc.message
            time.sleep(0.3)
        raise JacoError(f"nodes {names} not READY within {timeout:.0f}s (last: {last})")

    def run(self, rejoin: bool) -> None:
        meta, counts = self.meta, self.meta.counts
        started = time.monotonic()
        if not self.check("restore", lambda: self._restore()):
            return
        self.timings["restore_seconds"] = time.monotonic() - started
        server = "127.0.0.1:7000"
        self.start_jacod("drill-1", server)
        ready_since = time.monotonic()

        def ready() -> tuple[bool, str]:
            try:
                return self.wait_ready(server, ["drill-1"])
            except Unauthenticated:
                return True, "drill-1 is serving (it refused the token: see the next check)"

        if not self.check("ready", ready):
            return
        self.timings["ready_seconds"] = time.monotonic() - ready_since
        with self.client(server) as client:
            status: Any = None

            def old_token() -> tuple[bool, str]:
                nonlocal status
                status = client.call("Status", pb.StatusRequest())
                return True, f"token {parse_token(self.token).id} from before the backup works"

            if not self.check("old token authenticates", old_token):
                return
            deps = list(status.deployments)
            replicas = [r for d in deps for r in d.placed]
            self.check(
                "deployments",
                lambda: (
                    len(deps) == counts.get("deployments", 0)
                    and len(replicas) == counts.get("replicas", 0),
                    f"{len(deps)} deployments / {len(replicas)} replicas; backup had "
                    f"{counts.get('deployments', 0)} / {counts.get('replicas', 0)}",
                ),
            )
            ips = [r.ip for r in replicas]
            distinct = len(set(ips))
            self.check(
                "ip uniqueness",
                lambda: (len(ips) == distinct, f"{len(ips)} replica IPs, {distinct} distinct"),
            )
            self.check(
                "cluster id",
                lambda: (status.cluster_id == meta.cluster_id, f"{status.cluster_id}"),
            )
            self.check("audit history", lambda: self._audit(client))
            cluster = client.call("ClusterStatus", pb.ClusterStatusRequest())
            pinned = parse_token(self.token).ca_fingerprint
            expected = meta.ca_fingerprint or pinned
            self.check(
                "ca fingerprint",
                lambda: (
                    cluster.ca_fingerprint == expected == pinned,
                    f"{cluster.ca_fingerprint[:16]}… (backup {expected[:16]}…)",
                ),
            )
            self.check("state digest", lambda: self._digest(client))
            if rejoin:
                self.check("rejoin", lambda: self._rejoin(client, server))

    def _restore(self) -> tuple[bool, str]:
        restored = restore(
            self.archive, DataDir(DATA / "drill-1"), "drill-1", Ports("127.0.0.1", 7000, 2379, 2380)
        )
        return True, f"index {restored.snapshot_index}"

    def _digest(self, client: Client) -> tuple[bool, str]:
        """The running node's own store, read through its API at the snapshot index: the
        same records, counted and hashed the way the backup's meta.json was?"""
        index = self.meta.snapshot_index
        state = client.call("StateDigest", pb.StateDigestRequest(revision=index))
        counts = dict(state.counts)
        ok = state.state_digest == self.meta.state_digest and counts == self.meta.counts
        return ok, (
            f"running store at index {index}: digest {state.state_digest[:16]}… "
            f"(backup {self.meta.state_digest[:16]}…), {sum(counts.values())} records"
        )

    def _audit(self, client: Client) -> tuple[bool, str]:
        events = list(client.stream("Audit", pb.AuditRequest(), timeout=60))
        history = self.meta.counts.get("audit", 1) - 1  # the table also holds the head
        restored = [e for e in events if e.type == "RESTORE_COMPLETED"]
        chain = client.call("VerifyAudit", pb.VerifyAuditRequest())
        ok = (
            len(restored) == 1
            and restored[0].seq == history + 1
            and [e.seq for e in events[:history]] == list(range(1, history + 1))
            and chain.ok
        )
        return ok, (
            f"{history} historical events, {len(restored)} RESTORE_COMPLETED "
            f"(seq {restored[0].seq if restored else '-'}), chain "
            f"{'intact' if chain.ok else 'BROKEN: ' + chain.reason}"
        )

    def _rejoin(self, client: Client, server: str) -> tuple[bool, str]:
        join = client.call("IssueJoinToken", pb.IssueJoinTokenRequest(ttl_seconds=600))
        join_cluster(
            DataDir(DATA / "drill-2"),
            "drill-2",
            Ports("127.0.0.1", 7001, 2381, 2382),
            server,
            join.token,
        )
        self.start_jacod("drill-2", "127.0.0.1:7001")
        self.wait_ready(server, ["drill-1", "drill-2"])
        return True, "drill-2 joined with a single-use token; both READY"

    def stop(self) -> None:
        for daemon in self.daemons:
            daemon.send_signal(signal.SIGTERM)
        for daemon in self.daemons:
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()


def probe(address: str) -> dict[str, Any]:
    """Is HOST:PORT reachable from here? (The isolation test asks about the host's ports.)"""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=3):
            return {"address": address, "reachable": True}
    except OSError as exc:
        return {"address": address, "reachable": False, "error": str(exc)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--archive", type=Path, default=Path("/input/backup.tar.gz"))
    parser.add_argument("--meta", type=Path, default=Path("/input/meta.json"))
    parser.add_argument("--token-file", type=Path, default=Path("/input/token"))
    parser.add_argument("--rejoin", action="store_true")
    parser.add_argument(
        "--probe",
        action="append",
        default=[],
        help="only report whether these HOST:PORT are reachable",
    )
    args = parser.parse_args()
    if args.probe:
        listener = socket.create_server(("127.0.0.1", 0))  # the sandbox's own loopback works
        own = f"127.0.0.1:{listener.getsockname()[1]}"
        print(
            json.dumps(
                {
                    "probes": [probe(a) for a in [*args.probe, own]],
                    "hostname": socket.gethostname(),
                    "pid": os.getpid(),
                }
            )
        )
        return
    drill = Drill(
        args.archive, BackupMeta.parse(args.meta.read_bytes()), args.token_file.read_text().strip()
    )
    try:
        drill.run(args.rejoin)
    finally:
        drill.stop()
    print(
        json.dumps(
            {
                "checks": [asdict(c) for c in drill.checks],
                "timings": drill.timings,
                "ok": all(c.ok for c in drill.checks),
            }
        )
    )
    sys.exit(0 if all(c.ok for c in drill.checks) else 1)


if __name__ == "__main__":
    main()
