"""A node's data dir: its layout, its node.json, and the checks commands make on it.

$JACO_DATA_DIR/           (default /var/lib/jaco, mode 0700)
  node.json               this node's identity and ports
  pki/ca.crt              the cluster CA certificate
  pki/node.crt node.key   this node's certificate and key (0600)
  etcd/                   the etcd member's data
  etcd.log                the etcd member's log
  etcd-socket/etcd:0      the member's unix socket for jacod (directory 0700)
  backup-tmp/             a large backup's sorted runs of records while it streams, in
                          unnamed files (gone with the process); removed at every start
  jacod.lock              held (flock) by the running jacod
  restore.json            left by `jaco restore` until the first boot records it
"""

from __future__ import annotations

import fcntl
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import IO, Any

from jaco.errors import DaemonRunning, DataDirError
from jaco.files import write_private
from jaco.model.etcd_types import TlsFiles

DEFAULT_DATA_DIR = "/var/lib/jaco"
NODE_SCHEMA = 1


def data_dir_from_env() -> Path:
    return Path(os.environ.get("JACO_DATA_DIR", DEFAULT_DATA_DIR))


@dataclass
class NodeConfig:
    name: str
    cluster_id: str
    advertise_host: str
    api_port: int
    etcd_client_port: int
    etcd_peer_port: int
    initial_cluster: str
    initial_cluster_state: str  # "new" or "existing"
    schema: int = NODE_SCHEMA
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def peer_url(self) -> str:
        return f"https://{url_host(self.advertise_host)}:{self.etcd_peer_port}"

    @property
    def api_address(self) -> str:
        return f"{url_host(self.advertise_host)}:{self.api_port}"


def url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


# etcd takes a unix socket's URL as host:port (unix://etcd:0) and listens at that name in its
# working directory, the data dir's etcd-socket
ETCD_SOCKET = "etcd:0"


class DataDir:
    def __init__(self, path: Path) -> None:
        # absolute: etcd runs in a directory of its own (etcd-socket) and is given these paths
        self.path = path.absolute()

    node_json = property(lambda self: self.path / "node.json")
    pki = property(lambda self: self.path / "pki")
    ca_cert = property(lambda self: self.path / "pki" / "ca.crt")
    node_cert = property(lambda self: self.path / "pki" / "node.crt")
    node_key = property(lambda self: self.path / "pki" / "node.key")
    etcd_dir = property(lambda self: self.path / "etcd")
    etcd_log = property(lambda self: self.path / "etcd.log")
    # jacod's way to its member: a unix socket in a directory only jacod's user may enter
    etcd_socket_dir = property(lambda self: self.path / "etcd-socket")
    etcd_socket = property(lambda self: self.etcd_socket_dir / ETCD_SOCKET)
    backup_dir = property(lambda self: self.path / "backup-tmp")
    lock_file = property(lambda self: self.path / "jacod.lock")
    restore_marker = property(lambda self: self.path / "restore.json")

    @property
    def tls(self) -> TlsFiles:
        return TlsFiles(self.ca_cert, self.node_cert, self.node_key)

    def require_empty(self) -> None:
        """Refuse to write into a data dir that holds anything (or is not a directory)."""
        if self.path.exists() and not self.path.is_dir():
            raise DataDirError(f"{self.path} exists and is not a directory")
        if self.path.is_dir() and any(self.path.iterdir()):
            raise DataDirError(
                f"the data dir {self.path} is not empty; refusing to overwrite it "
                "(point --data-dir / JACO_DATA_DIR at an empty directory)"
            )

    def create(self) -> None:
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.path, 0o700)
        self.pki.mkdir(mode=0o700, exist_ok=True)

    def load(self) -> NodeConfig:
        if not self.node_json.is_file() and self.path.is_dir() and any(self.path.iterdir()):
            raise DataDirError(
                f"{self.path} is not empty but holds no node.json: it is not a data dir jaco "
                "primed, or a `jaco cluster init` or `node join` was interrupted; empty it, "
                "then run that again"
            )
        if not self.node_json.is_file():
            raise DataDirError(
                f"{self.path} holds no initialised node (no node.json): run "
                "`jaco cluster init`, `jaco node join` or `jaco restore` first"
            )
        raw = json.loads(self.node_json.read_text())
        if raw.get("schema") != NODE_SCHEMA:
            raise DataDirError(f"{self.node_json} has unsupported schema {raw.get('schema')!r}")
        return NodeConfig(**raw)

    def save(self, config: NodeConfig) -> None:
        write_private(self.node_json, json.dumps(asdict(config), indent=2).encode() + b"\n")

    def lock(self) -> IO[bytes]:
        """Hold the data dir for this process; a second holder is refused."""
        handle = open(self.lock_file, "a+b")  # noqa: SIM115 - held for the process lifetime
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.close()
            raise DaemonRunning(
                f"another jacod is running on {self.path} (it holds {self.lock_file})"
            ) from None
        handle.truncate(0)
        handle.write(f"{os.getpid()}\n".encode())
        handle.flush()
        return handle

    def require_stopped(self) -> None:
        if not self.lock_file.exists():
            return
        with open(self.lock_file, "rb") as handle:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DaemonRunning(
                    f"jacod is running on {self.path}; stop it first (systemctl stop jaco)"
                ) from None
            fcntl.flock(handle, fcntl.LOCK_UN)
