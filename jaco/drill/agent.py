"""The drill, inside the sandbox: decrypt into restore → start jacod → READY → checks → report.

Runs as `python -m jaco.drill.agent` under bubblewrap or in a container. Everything comes in
on stdin: one JSON line (an operator token from before the backup, the age identity that
decrypts it, what to expect: the cluster's id, the checksums the pipeline recorded, the audit
heads of earlier backups), then the ciphertext. When the pipeline drills a point in time too,
the line also names a revision inside the backup's window of change segments and the live
cluster's state digest at it, and the segments' ciphertexts follow the backup's: the backup
restored plus the segments up to that revision must give exactly that digest. The backup is
decrypted straight into the restore (no decrypted archive is written, except for a point in
time, which restores it a second time); the plaintext lives only in the sandbox's tmpfs.
Prints one JSON report on its last line of stdout: every check with pass/fail and detail, the
backup's meta, the measured timings. Everything it starts lives and dies in the sandbox.
The checks themselves are in jaco.drill.checks.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO, Any

from jaco.archive.age import parse_identities
from jaco.archive.encrypted import Decryption, decrypting
from jaco.archive.meta import BackupMeta
from jaco.archive.segment import MAX_SEGMENT_BYTES, SEGMENT_SUFFIX
from jaco.archive.snapshot_file import read_snapshot_state
from jaco.client.connection import Client, connect_info, full_status
from jaco.drill import checks
from jaco.drill.checks import Expect
from jaco.errors import JacoError, Unauthenticated
from jaco.files import create_private, require_space
from jaco.model.tokens import parse_token
from jaco.node.bootstrap import Ports, join_cluster
from jaco.node.config import DataDir
from jaco.node.pitr import DirSource, Target, point_in_time_restore
from jaco.node.restore import restore
from jaco.streams import Bounded, Readable
from jaco.v1 import jaco_pb2 as pb

DATA = Path(os.environ.get("JACO_DATA_DIR", "/var/lib/jaco"))
WORK = Path(os.environ.get("TMPDIR", "/tmp"))  # noqa: S108 - the sandbox's own tmpfs
MAX_HEADER = 1024 * 1024
READY_POLL = 0.1  # between asks whether the node is READY: the drill's RTO includes up to this
ARCHIVE = WORK / "backup.tar.gz"  # decrypted only for a point in time, which restores it again


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    seconds: float = 0.0  # how long the check took


SEGMENT_NAME = re.compile(r"^[0-9]{16}" + re.escape(SEGMENT_SUFFIX) + "$")


@dataclass(frozen=True)
class Point:
    """The point in time to drill: a revision of the backup's window, the live cluster's
    state digest at it, and the segments (name, bytes) that follow the backup on stdin."""

    revision: int
    state_digest: str
    segments: list[tuple[str, int]]

    @classmethod
    def parse(cls, raw: dict[str, Any]) -> Point:
        segments = [(str(name), int(size)) for name, size in raw["segments"]]
        for name, size in segments:
            if not SEGMENT_NAME.match(name) or not 0 < size <= MAX_SEGMENT_BYTES:
                raise ValueError(f"segment {name!r} of {size} bytes is not a segment")
        return cls(int(raw["revision"]), str(raw["state_digest"]), segments)


class Drill:
    def __init__(
        self,
        token: str,
        identity: str,
        expect: Expect,
        point: Point | None = None,
        backup_bytes: int = 0,
    ) -> None:
        self.token = token
        self.identity = identity
        self.expect = expect
        self.point = point
        self.backup_bytes = backup_bytes  # 0: the backup is the rest of stdin
        self.meta: BackupMeta | None = None
        self.checks: list[Check] = []
        self.timings: dict[str, float] = {}
        self.daemons: list[subprocess.Popen[bytes]] = []

    def check(self, name: str, fn: Callable[[], tuple[bool, str]]) -> bool:
        started = time.monotonic()
        ok, detail = _attempt(fn)
        self.checks.append(Check(name, ok, detail, round(time.monotonic() - started, 3)))
        return ok

    def start_jacod(self, name: str, listen: str) -> None:
        log = open(DATA / f"{name}.log", "ab")  # noqa: SIM115 - handed to the daemon
        self.daemons.append(
            subprocess.Popen(
                [sys.executable, "-m", "jaco.server.daemon", "--name", name,
                 "--data-dir", str(DATA / name), "--listen", listen],
                stdout=log,
                stderr=log,
            )
        )  # fmt: skip
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
            time.sleep(READY_POLL)
        raise JacoError(f"nodes {names} not READY within {timeout:.0f}s (last: {last})")

    def run(self, stdin: IO[bytes], rejoin: bool) -> None:
        ciphertext = Bounded(stdin, self.backup_bytes) if self.backup_bytes else stdin
        if not self._decrypt_and_restore(ciphertext, ARCHIVE if self.point else None):
            return
        if self.point is not None and not self.check(
            "segments received", lambda: self._receive_segments(stdin)
        ):
            return
        meta = self.meta
        assert meta is not None
        if self.point is not None and meta.cluster_id == self.expect.cluster_id:
            # offline, before this node starts: the archive is freed before the checks
            started = time.monotonic()
            self.check("point in time", lambda: self._point_in_time(ARCHIVE))
            self.timings["point_in_time_seconds"] = time.monotonic() - started
        ARCHIVE.unlink(missing_ok=True)
        if meta.cluster_id != self.expect.cluster_id:
            self.checks.append(
                Check(
                    "cluster id",
                    False,
                    f"the backup's meta.json names cluster {meta.cluster_id}; the drill is of "
                    f"cluster {self.expect.cluster_id}: refusing to go on",
                )
            )
            return
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
                status = full_status(client)  # every deployment, a page at a time
                return True, f"token {parse_token(self.token).id} from before the backup works"

            if not self.check("old token authenticates", old_token):
                return
            self.check("cluster id", lambda: checks.cluster_id(meta, self.expect, status))
            self.check("deployments", lambda: checks.deployments(meta, status))
            self.check("ip uniqueness", lambda: checks.ip_uniqueness(status))
            chain = checks.AuditChain(meta, self.expect, client)
            self.check("audit history", chain.history)
            self.check("audit anchors", chain.anchors_hold)
            # ClusterStatus inside the check: a refusal is this check failing, not the
            # drill ending without its report
            self.check(
                "ca fingerprint",
                lambda: checks.ca_fingerprint(
                    meta, self.token, client.call("ClusterStatus", pb.ClusterStatusRequest())
                ),
            )
            self.check("state digest", lambda: checks.state_digest(meta, client))
            if rejoin:
                self.check("rejoin", lambda: self._rejoin(client, server))

    def _decrypt_and_restore(self, ciphertext: Readable, copy_to: Path | None) -> bool:
        """Decrypt stdin straight into the restore, the plaintext hashed (the flow hashes the
        ciphertext as it downloads it): no decrypted archive is written (but `copy_to`, which a
        point in time restores again). Two checks, the backup is the one recorded, then the
        restore (reported only if the first passes; its time is what follows the last byte
        decrypted). The pipe is read to its end however the restore ends, so the first check
        is always answered."""
        started = time.monotonic()
        found = Decryption()
        restored: tuple[bool, str] = (False, "not attempted")

        def decrypt_and_restore() -> tuple[bool, str]:
            nonlocal found, restored
            identities = parse_identities(self.identity, "the verify identity")
            with contextlib.ExitStack() as stack:
                copy = None
                if copy_to is not None:
                    if self.backup_bytes:  # what it decrypts to is a little smaller
                        require_space(copy_to.parent, self.backup_bytes, "decrypting this backup")
                    copy = stack.enter_context(create_private(copy_to))
                plain, found = stack.enter_context(decrypting(ciphertext, identities, copy=copy))
                restored = _attempt(lambda: self._restore(plain))
            return self._recorded(found)

        recorded = _attempt(decrypt_and_restore)
        total = time.monotonic() - started
        decrypted = min(found.seconds, total) if found.seconds else total
        self.checks.append(Check("backup is the one recorded", *recorded, round(decrypted, 3)))
        if not recorded[0]:
            self.meta = None  # what was restored is not the backup recorded: nothing of it
            return False
        self.checks.append(Check("restore", *restored, round(total - decrypted, 3)))
        self.timings["decrypt_seconds"] = decrypted
        self.timings["restore_seconds"] = total - decrypted
        return restored[0]

    def _recorded(self, found: Decryption) -> tuple[bool, str]:
        if not self.expect.plaintext_sha256:
            return False, "no SHA-256 of it was recorded: nothing to hold it to"
        if found.plaintext_sha256 != self.expect.plaintext_sha256:
            return False, "it decrypts to another archive than the one recorded"
        return True, f"{found.plaintext_size} bytes decrypted into the restore: the one recorded"

    def _receive_segments(self, stdin: IO[bytes]) -> tuple[bool, str]:
        """The segments' ciphertexts, as they follow the backup on stdin, each into the
        sandbox's tmpfs (they are decrypted and checked by the restore that reads them)."""
        assert self.point is not None
        folder = WORK / "segments"
        folder.mkdir(mode=0o700)
        for name, size in self.point.segments:
            part = Bounded(stdin, size)
            with create_private(folder / name) as out:
                shutil.copyfileobj(part, out, 1 << 20)
            if part.left:
                return False, f"stdin ended {part.left} bytes short of segment {name}"
        total = sum(size for _, size in self.point.segments)
        return True, f"{len(self.point.segments)} segments, {total} bytes"

    def _point_in_time(self, archive: Path) -> tuple[bool, str]:
        """The backup plus its segments restored to the point, offline, by `jaco restore
        --segments` itself; the digest read back from the restored etcd database file alone."""
        assert self.point is not None
        data = DataDir(DATA / "drill-pitr")
        identities = parse_identities(self.identity, "the verify identity")
        _, revision, at = point_in_time_restore(
            archive,
            DirSource(WORK / "segments"),
            identities,
            Target(revision=self.point.revision),
            data,
            "drill-pitr",
            Ports("127.0.0.1", 7010, 2391, 2392),
        )
        restored = read_snapshot_state(data.etcd_dir / "member" / "snap" / "db").state_digest
        ok = restored == self.point.state_digest
        return ok, (
            f"revision {revision} ({at or 'time unknown'}), {len(self.point.segments)} "
            f"segments replayed: digest {restored[:16]}… "
            f"{'equal to' if ok else 'differs from'} the live cluster's at that revision "
            f"({self.point.state_digest[:16]}…)"
        )

    def _restore(self, plain: IO[bytes]) -> tuple[bool, str]:
        self.meta = restore(
            plain, DataDir(DATA / "drill-1"), "drill-1", Ports("127.0.0.1", 7000, 2379, 2380)
        )
        return True, f"index {self.meta.snapshot_index}"

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
        ARCHIVE.unlink(missing_ok=True)  # a point in time's, if the drill stopped early
        for daemon in self.daemons:
            daemon.send_signal(signal.SIGTERM)
        for daemon in self.daemons:
            try:
                daemon.wait(30)
            except subprocess.TimeoutExpired:
                daemon.kill()

    def report(self) -> dict[str, Any]:
        # after stop(): this process's CPU and its waited-for children's (decrypter, jacod, etcd)
        used = map(resource.getrusage, (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
        cpu = sum(u.ru_utime + u.ru_stime for u in used)
        return {
            "checks": [asdict(c) for c in self.checks],
            "timings": {**self.timings, "cpu_seconds": round(cpu, 2)},
            "meta": self.meta.model_dump(mode="json") if self.meta else None,
            "ok": bool(self.checks) and all(c.ok for c in self.checks),
        }


def _attempt(fn: Callable[[], tuple[bool, str]]) -> tuple[bool, str]:
    """A check's outcome: what it returns, or its failure (a drill reports, it does not crash)."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001
        return False, exc.message if isinstance(exc, JacoError) else f"{type(exc).__name__}: {exc}"


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
        probes = [probe(a) for a in [*args.probe, own]]
        host, pid, uid = socket.gethostname(), os.getpid(), os.getuid()
        print(json.dumps({"probes": probes, "hostname": host, "pid": pid, "uid": uid}))
        return
    stdin = sys.stdin.buffer
    try:
        handed = json.loads(stdin.readline(MAX_HEADER))
        point = Point.parse(handed["point"]) if handed.get("point") else None
        drill = Drill(
            handed["token"],
            handed["identity"],
            Expect.parse(handed["expect"]),
            point,
            int(handed.get("backup_bytes", 0)),
        )
    except (ValueError, KeyError, TypeError) as exc:
        print(f"the drill's input is not what the pipeline sends: {exc}", file=sys.stderr)
        sys.exit(2)
    try:
        drill.run(stdin, args.rejoin)
    finally:
        drill.stop()
    report = drill.report()
    print(json.dumps(report))
    sys.exit(0 if report["ok"] else 1)


if __name__ == "__main__":
    main()
