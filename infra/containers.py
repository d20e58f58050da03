"""Real jaco nodes as containers of the jaco image, each its own host on a private network.

`infra/localcluster.py` puts every node on 127.0.0.1; here each node is a container of the
pinned image (`make image`) with an address of its own on a Docker network this module
creates (its own subnet), so restores onto another address and partitions (`docker network
disconnect`) can be exercised. The tests use it; it lives beside localcluster.py because it
is the same kind of thing: real nodes, really started, stopped by id.

- A container runs `sleep infinity` under the image's tini; jacod and every `jaco` command
  are `docker exec`ed into it, as an operator would ssh into a host. Its data lives in a
  tmpfs (`/var/lib/jaco`, the data dir a directory inside it: restore refuses a mount point),
  so nothing of a node touches the host's disk and no volume is created.
- Secrets never go in an argument list: the operator token is handed in on stdin into a
  0600 file in the container's tmpfs, and each `jaco` command reads it from there; join
  tokens are piped from `jaco node issue-join-token` into `jaco node join --token-file -`.
- Everything carries the label `jaco.containers=<run id>` with this host and PID; leaving the
  context removes the containers (with their anonymous volumes) and the network by id, also
  when a test failed, and `sweep()` removes what runs that died left behind.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import socket
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from flows.sandbox import IMAGE
from infra.localcluster import Result, wait_for

LABEL = "jaco.containers"
DATA_DIR = "/var/lib/jaco/node"
# In the container's own tmpfs, mode 0600: never on the host's disk, never in an argv.
TOKEN_FILE = "/tmp/jaco/operator.token"  # noqa: S105, S108
# Candidate subnets, tried in turn until the engine accepts one nobody else uses.
SUBNETS = [f"172.31.{n}.0/24" for n in range(16, 256)]


def docker(*args: str, input_: bytes | None = None, timeout: float = 120) -> Result:
    # No input: an empty stdin, never the test runner's (`docker exec -i` would read it).
    done = subprocess.run(
        ["docker", *args], input=input_ or b"", capture_output=True, timeout=timeout, check=False
    )
    out, err = done.stdout.decode(errors="replace"), done.stderr.decode(errors="replace")
    return Result(done.returncode, out, err)


def _ok(*args: str, input_: bytes | None = None, timeout: float = 120) -> str:
    result = docker(*args, input_=input_, timeout=timeout)
    if result.code != 0:
        raise RuntimeError(f"docker {' '.join(args[:3])} failed: {result.err.strip()[-300:]}")
    return result.out.strip()


def _owner_labels(run: str) -> list[str]:
    labels = {LABEL: run, f"{LABEL}.host": socket.gethostname(), f"{LABEL}.pid": str(os.getpid())}
    return [arg for key, value in labels.items() for arg in ("--label", f"{key}={value}")]


@dataclass
class NodeContainer:
    """One node's host: a container with an address on the run's network."""

    name: str
    ip: str
    id: str
    network: str

    @property
    def server(self) -> str:
        return f"{self.ip}:7000"

    def exec(self, *args: str, input_: bytes | None = None, timeout: float = 180) -> Result:
        return docker("exec", "-i", self.id, *args, input_=input_, timeout=timeout)

    def put_secret(self, path: str, data: bytes) -> None:
        """Write `data` to `path` in the container, mode 0600, through stdin."""
        script = 'umask 077; mkdir -p "$(dirname "$1")"; cat > "$1"'
        result = self.exec("sh", "-c", script, "sh", path, input_=data)
        assert result.code == 0, result.err

    def read(self, path: str) -> bytes:
        done = subprocess.run(
            ["docker", "exec", self.id, "cat", path], capture_output=True, timeout=120, check=True
        )
        return done.stdout

    def jaco_command(self, *args: str, token_file: str = TOKEN_FILE) -> list[str]:
        """`docker exec -i` of `jaco ARGS` with the operator token read from its 0600 file."""
        script = '[ -r "$0" ] && JACO_TOKEN=$(cat "$0") && export JACO_TOKEN; exec jaco "$@"'
        return ["docker", "exec", "-i", self.id, "sh", "-c", script, token_file, *args]

    def jaco(
        self, *args: str, input_: bytes | None = None, timeout: float = 180,
        token_file: str = TOKEN_FILE,
    ) -> Result:  # fmt: skip
        command = self.jaco_command(*args, token_file=token_file)
        return docker(*command[1:], input_=input_, timeout=timeout)

    def ok(self, *args: str, input_: bytes | None = None, token_file: str = TOKEN_FILE) -> Result:
        result = self.jaco(*args, input_=input_, token_file=token_file)
        assert result.code == 0, (
            f"jaco {' '.join(args)} on {self.name} ({result.code}): {result.err}"
        )
        return result

    def start_jacod(self) -> None:
        script = 'echo $$ > /tmp/jacod.pid; exec jacod --name "$1" >> /tmp/jacod.log 2>&1'
        _ok("exec", "-d", self.id, "sh", "-c", script, "sh", self.name)

    def stop_jacod(self) -> None:
        """SIGTERM, then wait until it is gone (jacod stops its API, then etcd)."""
        script = (
            'p=$(cat /tmp/jacod.pid) && kill -TERM "$p" && while kill -0 "$p"; do sleep 0.2; done'
        )
        self.exec("sh", "-c", script + " 2>/dev/null; rm -f /tmp/jacod.pid", timeout=60)

    def jacod_running(self) -> bool:
        return self.exec("sh", "-c", 'kill -0 "$(cat /tmp/jacod.pid)"').code == 0

    def wipe(self) -> None:
        """An empty data dir, as the backup page asks of a node that rejoins."""
        result = self.exec("sh", "-c", f"rm -rf {DATA_DIR}")
        assert result.code == 0, result.err

    def log(self) -> str:
        return self.exec("sh", "-c", "cat /tmp/jacod.log 2>/dev/null").out

    def disconnect(self) -> None:
        _ok("network", "disconnect", self.network, self.id)

    def connect(self) -> None:
        _ok("network", "connect", "--ip", self.ip, self.network, self.id)


@dataclass
class ContainerCluster:
    """The run's network and node containers; the nodes are named node-N."""

    run: str = field(default_factory=lambda: uuid.uuid4().hex[:10])
    image: str = IMAGE
    network: str = ""
    subnet: ipaddress.IPv4Network | None = None
    nodes: dict[str, NodeContainer] = field(default_factory=dict)
    token: str = ""
    _containers: list[str] = field(default_factory=list)
    _next_host: int = 10

    def create_network(self) -> None:
        taken = _subnets_in_use()
        for candidate in SUBNETS:
            net = ipaddress.IPv4Network(candidate)
            if any(net.overlaps(t) for t in taken):
                continue
            result = docker(
                "network", "create", "--driver", "bridge", "--subnet", candidate,
                *_owner_labels(self.run), f"jaco-net-{self.run}",
            )  # fmt: skip
            if result.code == 0:
                self.network, self.subnet = result.out.strip(), net
                return
            if "overlap" not in result.err:
                raise RuntimeError(f"docker network create failed: {result.err.strip()}")
        raise RuntimeError("no free /24 left in 172.31.16.0-172.31.255.0 for a test network")

    def address(self) -> str:
        """The next unused address of the network (never reused within a run)."""
        assert self.subnet is not None
        self._next_host += 1
        return str(self.subnet.network_address + self._next_host)

    def add(self, name: str, ip: str | None = None) -> NodeContainer:
        """A new host: a fresh container with an empty data dir and an address of its own."""
        ip = ip or self.address()
        container = _ok(
            "run", "-d", "--name", f"jaco-{self.run}-{name}-{ip.rsplit('.', 1)[1]}",
            "--hostname", name, "--network", self.network, "--ip", ip,
            *_owner_labels(self.run),
            "--read-only",
            "--tmpfs", "/var/lib/jaco:rw,nosuid,nodev,mode=0700,uid=10001,gid=10001",
            "--tmpfs", "/tmp:rw,nosuid,nodev,mode=1777",  # noqa: S108
            "--env", f"JACO_DATA_DIR={DATA_DIR}", "--env", "JACO_SERVER=127.0.0.1:7000",
            "--memory", "512m", "--pids-limit", "512",
            self.image, "sleep", "infinity",
        )  # fmt: skip
        self._containers.append(container)
        node = NodeContainer(name, ip, container, self.network)
        self.nodes[name] = node
        if self.token:
            node.put_secret(TOKEN_FILE, self.token.encode())
        return node

    def remove(self, name: str) -> None:
        """The host is gone: its container, and its data with it."""
        node = self.nodes.pop(name)
        docker("rm", "-f", "-v", node.id)
        self._containers.remove(node.id)

    def init(self, name: str = "node-1") -> NodeContainer:
        node = self.add(name)
        node.exec("mkdir", "-p", "-m", "0700", str(Path(TOKEN_FILE).parent))
        node.ok("cluster", "init", "--name", name, "--advertise-host", node.ip,
                "--token-file", TOKEN_FILE)  # fmt: skip
        self.set_token(node.read(TOKEN_FILE).decode().strip())
        node.start_jacod()
        self.wait_ready([name], node)
        return node

    def grow(self, size: int) -> None:
        """node-1 creates the cluster, node-2… join it one after the other, each READY."""
        first = self.init("node-1")
        for i in range(2, size + 1):
            node = self.add(f"node-{i}")
            result = self.join(node, first)
            assert result.code == 0, result.err
            node.start_jacod()
            self.wait_ready([node.name], first)

    def set_token(self, token: str) -> None:
        """The operator token, handed to every node's 0600 file (and to nodes added later)."""
        self.token = token
        for node in self.nodes.values():
            node.put_secret(TOKEN_FILE, token.encode())

    def start_join(
        self, node: NodeContainer, via: NodeContainer, *extra: str,
        issuer: NodeContainer | None = None,
    ) -> subprocess.Popen[bytes]:  # fmt: skip
        """`jaco node issue-join-token | jaco node join --token-file - --peer VIA` across
        hosts, as the backup page shows it (the token issued on `issuer`, by default `via`);
        the join runs, its stdout and stderr are pipes."""
        issue = subprocess.Popen(
            (issuer or via).jaco_command("node", "issue-join-token"),
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        assert issue.stdout is not None
        join = subprocess.Popen(
            node.jaco_command(
                "node", "join", "--token-file", "-", "--peer", via.server,
                "--name", node.name, "--advertise-host", node.ip, *extra,
            ),
            stdin=issue.stdout, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
        )  # fmt: skip
        issue.stdout.close()  # the join holds the only reading end
        issue.wait(120)
        assert issue.returncode == 0, "jaco node issue-join-token failed"
        return join

    def join(
        self, node: NodeContainer, via: NodeContainer, *extra: str,
        issuer: NodeContainer | None = None,
    ) -> Result:  # fmt: skip
        return finish(self.start_join(node, via, *extra, issuer=issuer))

    def status(self, via: NodeContainer) -> list[dict[str, object]]:
        nodes: list[dict[str, object]] = via.ok("cluster", "status", "--json").json()["nodes"]
        return nodes

    def states(self, via: NodeContainer) -> dict[str, str]:
        return {str(n["name"]): str(n["state"]) for n in self.status(via)}

    def wait_ready(self, names: list[str], via: NodeContainer, timeout: float = 120) -> None:
        def ready() -> bool:
            states = self.states(via)
            return all(states.get(n) == "READY" for n in names)

        wait_for(ready, timeout, f"nodes {names} READY (via {via.name})")

    def leader(self, via: NodeContainer) -> str:
        leaders = [str(n["name"]) for n in self.status(via) if n["leader"]]
        assert leaders, "no leader reported"
        return leaders[0]

    def close(self) -> None:
        for container in self._containers:
            docker("rm", "-f", "-v", container)
        self._containers.clear()
        self.nodes.clear()
        if self.network:
            docker("network", "rm", self.network)
            self.network = ""


def start(command: list[str]) -> subprocess.Popen[bytes]:
    """A command (a `jaco_command`) started, its stdout and stderr pipes: `finish` it."""
    return subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def finish(proc: subprocess.Popen[bytes], timeout: float = 400) -> Result:
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return Result(proc.returncode, out.decode(errors="replace"), err.decode(errors="replace"))


@contextlib.contextmanager
def container_cluster(image: str = IMAGE) -> Iterator[ContainerCluster]:
    """A network of the run's own, and everything started on it removed at the end."""
    sweep()
    cluster = ContainerCluster(image=image)
    try:
        cluster.create_network()
        yield cluster
    finally:
        cluster.close()


def _subnets_in_use() -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
    ids = _ok("network", "ls", "-q").split()
    if not ids:
        return []
    found = []
    for net in json.loads(_ok("network", "inspect", *ids)):
        for config in (net.get("IPAM") or {}).get("Config") or []:
            with contextlib.suppress(ValueError, KeyError):
                found.append(ipaddress.ip_network(config["Subnet"], strict=False))
    return found


def sweep() -> list[str]:
    """Remove the containers and networks of runs on this host whose process is gone."""
    removed = []
    host = socket.gethostname()
    for kind, listing in (
        ("container", ["ps", "-a", "-q"]),
        ("network", ["network", "ls", "-q"]),
    ):
        for item in _ok(*listing, "--filter", f"label={LABEL}").split():
            fmt = "{{json .Config.Labels}}" if kind == "container" else "{{json .Labels}}"
            labels = json.loads(_ok(kind, "inspect", "--format", fmt, item) or "{}") or {}
            pid = labels.get(f"{LABEL}.pid", "")
            if labels.get(f"{LABEL}.host") != host or (
                pid.isdigit() and Path(f"/proc/{pid}").exists()
            ):
                continue
            docker(*(["rm", "-f", "-v"] if kind == "container" else ["network", "rm"]), item)
            removed.append(f"{kind} {item[:12]} of dead run {labels.get(LABEL)}")
    return removed
