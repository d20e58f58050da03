"""Real jaco nodes on one machine, for tests and `make demo`.

Every process is started on free loopback ports and stopped by PID.

Nothing here is mocked: `jaco` and `jacod` run as the installed console scripts, each jacod
runs its own etcd member, and the CLI talks TLS gRPC to the daemons.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from infra.ports import free_port
from jaco.node.etcd_member import dying_with_parent

BIN = Path(sys.executable).parent
JACO = str(BIN / "jaco")
JACOD = str(BIN / "jacod")


def wait_for(
    predicate: Callable[[], Any], timeout: float = 60, what: str = "condition", every: float = 0.3
) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = predicate()
            if last:
                return last
        except Exception as exc:  # noqa: BLE001 - keep polling, report the last one
            last = exc
        time.sleep(every)
    raise AssertionError(f"timed out waiting for {what}; last: {last!r}")


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> Any:
        return json.loads(self.out)


def run(
    args: list[str],
    env: dict[str, str] | None = None,
    timeout: float = 120,
    input_: str | None = None,
) -> Result:
    full_env = {**os.environ, **(env or {})}
    proc = subprocess.run(
        args,
        capture_output=True,
        text=True,
        env=full_env,
        timeout=timeout,
        input=input_,
        check=False,
    )
    return Result(proc.returncode, proc.stdout, proc.stderr)


@dataclass
class Node:
    name: str
    data_dir: Path
    api_port: int = field(default_factory=free_port)
    client_port: int = field(default_factory=free_port)
    peer_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    # False: the daemon dies with the process that started it (an interrupted test run leaves
    # no orphans). Start nodes from the main thread: the signal follows the starting thread.
    outlive_parent: bool = False

    @property
    def server(self) -> str:
        return f"127.0.0.1:{self.api_port}"

    def port_flags(self) -> list[str]:
        return [
            "--data-dir",
            str(self.data_dir),
            "--advertise-host",
            "127.0.0.1",
            "--api-port",
            str(self.api_port),
            "--etcd-client-port",
            str(self.client_port),
            "--etcd-peer-port",
            str(self.peer_port),
        ]

    def start(self, argv: list[str] | None = None) -> None:
        """Start jacod (`argv`: another command line for it, such as the systemd unit's)."""
        log = open(self.data_dir.parent / f"{self.name}.jacod.log", "ab")  # noqa: SIM115
        cmd, preexec = dying_with_parent(
            argv
            or [
                JACOD,
                "--name",
                self.name,
                "--data-dir",
                str(self.data_dir),
                "--listen",
                self.server,
            ],
            when=not self.outlive_parent,
        )
        self.process = subprocess.Popen(
            cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL, preexec_fn=preexec
        )
        log.close()

    def etcd_pid(self) -> int | None:
        """The PID of this node's etcd child (read from /proc; None when it has none)."""
        if self.process is None:
            return None
        children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        with contextlib.suppress(OSError):
            for pid in children.read_text().split():
                if "etcd" in Path(f"/proc/{pid}/comm").read_text():
                    return int(pid)
        return None

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.process is None:
            return None
        proc, self.process = self.process, None
        if proc.poll() is None:
            proc.send_signal(sig)
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        return proc.returncode

    def etcdctl_command(self) -> list[str]:
        """`etcdctl` talking to this node's etcd member with the node's own client cert."""
        pki = self.data_dir / "pki"
        return [
            "etcdctl",
            f"--endpoints=https://127.0.0.1:{self.client_port}",
            f"--cacert={pki / 'ca.crt'}",
            f"--cert={pki / 'node.crt'}",
            f"--key={pki / 'node.key'}",
        ]

    def snapshot_save_command(self, path: Path) -> list[str]:
        """`etcdctl snapshot save` of this node's etcd member to `path` (the benches' reference)."""
        return [*self.etcdctl_command(), "snapshot", "save", str(path)]

    def save_snapshot(self, path: Path) -> Path:
        subprocess.run(self.snapshot_save_command(path), check=True, capture_output=True)
        return path

    def log(self) -> str:
        path = self.data_dir.parent / f"{self.name}.jacod.log"
        return path.read_text(errors="replace") if path.exists() else ""


class Cluster:
    """A cluster of real nodes under one temporary directory."""

    def __init__(self, root: Path, outlive_parent: bool = False) -> None:
        self.root = root
        self.outlive_parent = outlive_parent
        self.nodes: dict[str, Node] = {}
        self.token = ""

    def jaco(
        self,
        *args: str,
        server: str | None = None,
        token: str | None = None,
        env: dict[str, str] | None = None,
        timeout: float = 120,
    ) -> Result:
        first = next(iter(self.nodes.values()), None)
        base = {
            "JACO_TOKEN": self.token if token is None else token,
            "JACO_SERVER": server or (first.server if first else ""),
        }
        return run([JACO, *args], env={**base, **(env or {})}, timeout=timeout)

    def ok(self, *args: str, **kwargs: Any) -> Result:
        result = self.jaco(*args, **kwargs)
        assert result.code == 0, f"jaco {' '.join(args)} failed ({result.code}): {result.err}"
        return result

    def new_node(self, name: str) -> Node:
        node = Node(name, self.root / name, outlive_parent=self.outlive_parent)
        self.nodes[name] = node
        return node

    def init(self, name: str = "node-1") -> Node:
        node = self.new_node(name)
        token_file = self.root / "admin.token"
        result = run(
            [
                JACO,
                "cluster",
                "init",
                "--name",
                name,
                *node.port_flags(),
                "--token-file",
                str(token_file),
            ]
        )
        assert result.code == 0, result.err
        self.token = token_file.read_text().strip()
        node.start()
        self.wait_ready([name])
        return node

    def start_join(
        self, node: Node, join_token: str, via: Node, *extra: str
    ) -> subprocess.Popen[str]:
        """`jaco node join` for `node` (not started), running; stdout and stderr are pipes.
        The token goes in on stdin, as an operator's would: never in an argument list."""
        args = ["node", "join", "--peer", via.server, "--token-file", "-", "--name", node.name]
        read_end, write_end = os.pipe()
        os.write(write_end, join_token.encode())  # far less than a pipe holds
        os.close(write_end)
        try:
            return subprocess.Popen(
                [JACO, *args, *node.port_flags(), *extra],
                stdin=read_end,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
        finally:
            os.close(read_end)

    def run_join(
        self, node: Node, join_token: str, via: Node, *extra: str, timeout: float = 180
    ) -> Result:
        """`jaco node join` for `node` (not started), to its end."""
        proc = self.start_join(node, join_token, via, *extra)
        try:
            out, err = proc.communicate(timeout=timeout)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        return Result(proc.returncode, out, err)

    def try_join(self, name: str, join_token: str, via: Node, *extra: str) -> tuple[Node, Result]:
        """`jaco node join` for a new node (not started); the caller judges the result."""
        node = self.new_node(name)
        return node, self.run_join(node, join_token, via, *extra)

    def join(self, name: str, via: Node | None = None) -> Node:
        via = via or self.ready_node()
        join_token = self.ok("node", "issue-join-token", server=via.server).out.strip()
        node, result = self.try_join(name, join_token, via)
        assert result.code == 0, result.err
        node.start()
        return node

    def ready_node(self) -> Node:
        return next(n for n in self.nodes.values() if n.process is not None)

    def states(self, via: Node | None = None) -> dict[str, str]:
        reply = self.ok("cluster", "status", "--json", server=(via or self.ready_node()).server)
        return {n["name"]: n["state"] for n in reply.json()["nodes"]}

    def wait_ready(self, names: list[str], via: Node | None = None, timeout: float = 90) -> None:
        def all_ready() -> bool:
            states = self.states(via)
            return all(states.get(n) == "READY" for n in names)

        wait_for(all_ready, timeout, f"nodes {names} READY")

    def leader(self, via: Node | None = None) -> Node:
        reply = self.ok("cluster", "status", "--json", server=(via or self.ready_node()).server)
        names = [n["name"] for n in reply.json()["nodes"] if n["leader"]]
        assert names, "no leader reported"
        return self.nodes[names[0]]

    def stop_all(self) -> None:
        for node in self.nodes.values():
            node.stop()


@contextlib.contextmanager
def cluster_of(root: Path, size: int, outlive_parent: bool = False) -> Iterator[Cluster]:
    cluster = Cluster(root, outlive_parent)
    try:
        cluster.init("node-1")
        for i in range(2, size + 1):
            cluster.join(f"node-{i}")
            cluster.wait_ready([f"node-{i}"])
        yield cluster
    finally:
        cluster.stop_all()
