"""Ephemeral sandboxes for restore drills, behind one small driver interface.

A restored node carries the production cluster's identity (its CA, its tokens), so a sandbox
must never reach production peers. Everything goes in through the agent's stdin — a JSON line
(token, verify identity, what to expect), then the ciphertext — so no secret and no plaintext
touches the host's disk, and the sandbox needs no host directory at all.

- `BwrapSandbox` runs the agent (`python -m jaco.drill.agent`) in fresh mount, pid, net,
  uts, ipc (and cgroup) namespaces: the only network is the sandbox's own loopback, the data
  dir and /tmp are tmpfs, the installed jaco is bound read-only, the environment is cleared.
  When the agent ends, or its parent dies, the pid namespace and everything in it go.
- `DockerSandbox` runs it in a throwaway container of the pinned jaco image (`make image`):
  `--network none`, read-only root, tmpfs data, memory/CPU/pids limits, no capabilities,
  labelled with the drill and its deadline, `--rm`; `sweep_sandboxes` removes the labelled
  leftovers of drills whose run died or overran.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import subprocess
import sys
import sysconfig
import tempfile
import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, Protocol

import jaco
from flows.download import Download
from flows.errors import PipelineError
from flows.sandbox_limits import can_cap_tmpfs, tmpfs_bytes

# What a sandbox's stdin gets after the header: files, or a download as it comes.
Payload = Sequence[Path | Download]

CHUNK = 1024 * 1024
LABEL = "jaco.drill"
# Drill runs that share a Docker host but not one another's leftovers (two sites' workers on
# one host, the suite's parallel workers) each name a scope: a drill labels its container with
# it and sweeps only the containers of its own scope (unset: those labelled with none).
SCOPE_ENV = "JACO_DRILL_SCOPE"
IMAGE = f"jaco:{jaco.__version__}"


@dataclass
class AgentResult:
    returncode: int
    report: dict[str, Any]
    stderr: str


class Sandbox(Protocol):
    name: str
    driver: str
    image: str | None

    def run_agent(
        self, args: list[str], timeout: float, header: bytes = b"", payload: Payload = ()
    ) -> AgentResult: ...


def _parse_report(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                report: dict[str, Any] = json.loads(line)
                return report
            except ValueError:
                break
    return {}


def _feed(stdin: IO[bytes], header: bytes, payload: Payload) -> None:
    """Write the header line, then the payload one after the other (files, or chunks as a
    download brings them), then close: the agent's stdin (the header says where each ends)."""
    with contextlib.suppress(BrokenPipeError, OSError), stdin:
        stdin.write(header)
        for item in payload:
            if isinstance(item, Download):
                with contextlib.closing(iter(item)) as chunks:  # let go of it however it ends
                    for chunk in chunks:
                        stdin.write(chunk)
                if item.error is not None:
                    return  # cut short: what follows would be read as the rest of it
                continue
            with open(item, "rb") as source:
                while chunk := source.read(CHUNK):
                    stdin.write(chunk)


def _drain(pipe: IO[bytes], into: list[bytes]) -> None:
    with pipe:
        while chunk := pipe.read(65536):
            into.append(chunk)


def _run(cmd: list[str], timeout: float, header: bytes, payload: Payload, on_timeout: Any,
         name: str) -> AgentResult:  # fmt: skip
    """Start the sandbox, stream its stdin, collect its output (each on a thread of its own:
    `communicate` would close stdin at once), and bound the whole by `timeout`."""
    process = subprocess.Popen(
        cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    assert process.stdin and process.stdout and process.stderr
    out: list[bytes] = []
    err: list[bytes] = []
    threads = [
        threading.Thread(target=_feed, args=(process.stdin, header, payload), daemon=True),
        threading.Thread(target=_drain, args=(process.stdout, out), daemon=True),
        threading.Thread(target=_drain, args=(process.stderr, err), daemon=True),
    ]
    for thread in threads:
        thread.start()
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        on_timeout()
        process.kill()
        process.wait()
        for thread in threads:
            thread.join(10)
        raise PipelineError(
            f"the drill in sandbox {name} did not finish within {timeout:.0f}s; "
            f"{b''.join(err).decode(errors='replace')[-300:]}"
        ) from None
    for thread in threads:
        thread.join(10)
    stdout, stderr = b"".join(out).decode(errors="replace"), b"".join(err).decode(errors="replace")
    return AgentResult(process.returncode, _parse_report(stdout), stderr)


def _install_paths() -> list[str]:
    """What the agent needs to run jaco: the interpreter, the venv, the jaco package's root
    (a checkout, installed or not)."""
    paths = {sys.base_prefix, sys.prefix, sysconfig.get_paths()["purelib"], _package_root()}
    return sorted(p for p in paths if Path(p).exists())


def _package_root() -> str:
    return str(Path(jaco.__file__).resolve().parent.parent)


class BwrapSandbox:
    driver = "bwrap"
    image: str | None = None

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"drill-{uuid.uuid4().hex[:8]}"
        found = shutil.which("bwrap")
        if not found:
            raise PipelineError("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")
        can_cap_tmpfs(found)

    def command(self, args: list[str]) -> list[str]:
        cmd = [
            "bwrap",
            "--die-with-parent",
            "--new-session",
            "--unshare-ipc",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-uts",
            "--unshare-cgroup-try",
            "--hostname",
            self.name,
            "--ro-bind",
            "/usr",
            "/usr",
        ]
        for top in ("/bin", "/sbin", "/lib", "/lib32", "/lib64"):
            path = Path(top)
            if path.is_symlink():
                cmd += ["--symlink", str(os.readlink(path)), top]
            elif path.exists():
                cmd += ["--ro-bind", top, top]
        for etc in ("passwd", "group", "hosts", "nsswitch.conf", "localtime", "ssl"):
            cmd += ["--ro-bind-try", f"/etc/{etc}", f"/etc/{etc}"]
        size = str(tmpfs_bytes())  # as the docker driver's: without it, half the host's RAM
        cmd += ["--proc", "/proc", "--dev", "/dev", "--size", size, "--tmpfs", "/tmp"]
        cmd += ["--size", size, "--tmpfs", "/var/lib/jaco"]
        # bwrap mounts in order: the installation is bound after the fresh tmpfs mounts, so a
        # checkout or venv that lives under /tmp stays visible inside.
        for install in _install_paths():
            cmd += ["--ro-bind", install, install]
        venv_bin = str(Path(sys.prefix) / "bin")
        env = {
            "PATH": f"{venv_bin}:/usr/bin:/bin",
            "HOME": "/tmp",
            "JACO_DATA_DIR": "/var/lib/jaco",
            "LANG": "C.UTF-8",
            "PYTHONPATH": _package_root(),  # jaco imports however the worker was started
        }
        cmd += ["--chdir", "/tmp", "--clearenv"]
        for key, value in env.items():
            cmd += ["--setenv", key, value]
        return [*cmd, "--", sys.executable, "-m", "jaco.drill.agent", *args]

    def run_agent(
        self, args: list[str], timeout: float, header: bytes = b"", payload: Payload = ()
    ) -> AgentResult:
        # On a timeout, killing bwrap is enough: --die-with-parent takes the namespace down.
        return _run(self.command(args), timeout, header, payload, lambda: None, self.name)


class InlineSandbox:
    """The agent as a plain child process, in this very environment: for a run that is itself
    an ephemeral container (a Prefect Docker work pool) — the container is the sandbox.
    Refused anywhere else (JACO_DRILL_IN_CONTAINER=1 says where): on a worker host it would
    restore a production identity next to production."""

    driver = "inline"
    image: str | None = None

    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"drill-{uuid.uuid4().hex[:8]}"
        if os.environ.get("JACO_DRILL_IN_CONTAINER") != "1":
            raise PipelineError(
                "the inline drill driver runs only inside an ephemeral drill container "
                "(JACO_DRILL_IN_CONTAINER=1, set by the Docker work pool's job variables): "
                "use docker or bwrap"
            )
        self.image = os.environ.get("JACO_IMAGE") or None

    def run_agent(
        self, args: list[str], timeout: float, header: bytes = b"", payload: Payload = ()
    ) -> AgentResult:
        scratch = Path(tempfile.mkdtemp(prefix=f"{self.name}-"))
        cmd = [
            "env", f"JACO_DATA_DIR={scratch / 'data'}", f"TMPDIR={scratch}",
            sys.executable, "-m", "jaco.drill.agent", *args,
        ]  # fmt: skip
        try:
            (scratch / "data").mkdir(mode=0o700)
            return _run(cmd, timeout, header, payload, lambda: None, self.name)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def docker_available() -> str | None:
    """None if a Docker engine answers here, else why not."""
    if not shutil.which("docker"):
        return "the docker command is not installed"
    done = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0 or not done.stdout.strip():
        return f"no Docker engine answers: {done.stderr.strip()[-200:]}"
    return None


def image_present(image: str) -> bool:
    done = subprocess.run(
        ["docker", "image", "inspect", image], capture_output=True, timeout=30, check=False
    )
    return done.returncode == 0


class DockerSandbox:
    """The agent in a throwaway container of the pinned jaco image."""

    driver = "docker"

    def __init__(self, image: str | None = None, name: str | None = None) -> None:
        self.name = name or f"drill-{uuid.uuid4().hex[:8]}"
        self.image: str | None = image or os.environ.get("JACO_DRILL_IMAGE", IMAGE)
        why = docker_available()
        if why:
            raise PipelineError(f"the docker driver needs a Docker engine: {why}")
        if not image_present(str(self.image)):
            raise PipelineError(
                f"the drill image {self.image} is not in the local Docker engine: build it with "
                "`make image`"
            )

    def command(self, args: list[str], deadline: float) -> list[str]:
        size = tmpfs_bytes()
        return [
            "docker", "run", "--rm", "-i",
            "--name", self.name,
            "--hostname", self.name,
            "--label", f"{LABEL}={self.name}",
            "--label", f"{LABEL}.host={socket.gethostname()}",
            "--label", f"{LABEL}.pid={os.getpid()}",
            "--label", f"{LABEL}.deadline={int(deadline)}",
            "--label", f"{LABEL}.scope={os.environ.get(SCOPE_ENV, '')}",
            "--network", "none",
            "--read-only",
            "--tmpfs", f"/tmp:rw,nosuid,nodev,size={size}",
            "--tmpfs", f"/var/lib/jaco:rw,nosuid,nodev,mode=0700,uid=10001,gid=10001,size={size}",
            "--memory", os.environ.get("JACO_DRILL_MEMORY", "4g"),
            "--cpus", os.environ.get("JACO_DRILL_CPUS", "2"),
            "--pids-limit", "512",
            "--cap-drop", "ALL",
            "--security-opt", "no-new-privileges",
            "--env", "JACO_DATA_DIR=/var/lib/jaco",
            str(self.image),
            "python", "-m", "jaco.drill.agent", *args,
        ]  # fmt: skip

    def run_agent(
        self, args: list[str], timeout: float, header: bytes = b"", payload: Payload = ()
    ) -> AgentResult:
        deadline = time.time() + timeout
        try:
            return _run(
                self.command(args, deadline), timeout, header, payload, self.remove, self.name
            )
        finally:
            self.remove()  # --rm removes it when it exits; this covers a CLI that failed early

    def remove(self) -> None:
        subprocess.run(
            ["docker", "rm", "-f", "-v", self.name], capture_output=True, timeout=60, check=False
        )


def sweep_sandboxes() -> list[str]:
    """Remove drill containers of this scope (SCOPE_ENV) left by runs that died (their process
    is gone from this host) or that overran their deadline. Nothing to do without a Docker
    engine."""
    if docker_available():
        return []
    listed = subprocess.run(
        ["docker", "ps", "-a", "--filter", f"label={LABEL}", "--format", "{{.ID}} {{.Names}}"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    removed = []
    for line in listed.stdout.splitlines():
        container, _, name = line.partition(" ")
        labels = _labels(container)
        if labels.get(f"{LABEL}.scope", "") != os.environ.get(SCOPE_ENV, ""):
            continue  # another scope's: its own drills sweep it
        ours = labels.get(f"{LABEL}.host") == socket.gethostname()
        owner_dead = ours and not _alive(labels.get(f"{LABEL}.pid", ""))
        overran = time.time() > float(labels.get(f"{LABEL}.deadline", "0") or 0)
        if not (owner_dead or overran):
            continue
        # -v: its anonymous volumes too (a container made without the drill's tmpfs has one)
        subprocess.run(["docker", "rm", "-f", "-v", container], capture_output=True, timeout=60)
        removed.append(f"the drill container {name} ({'overran' if overran else 'run died'})")
    return removed


def _labels(container: str) -> dict[str, str]:
    done = subprocess.run(
        ["docker", "inspect", "--format", "{{json .Config.Labels}}", container],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    try:
        return dict(json.loads(done.stdout or "{}") or {})
    except ValueError:
        return {}


def _alive(pid: str) -> bool:
    return pid.isdigit() and Path(f"/proc/{pid}").exists()


def open_sandbox(driver: str) -> Sandbox:
    """`docker` or `bwrap`; `auto` is docker wherever an engine answers and holds the pinned
    image, bubblewrap elsewhere."""
    if driver == "auto":
        driver = "docker" if docker_available() is None and image_present(IMAGE) else "bwrap"
    if driver == "bwrap":
        return BwrapSandbox()
    if driver == "docker":
        return DockerSandbox()
    if driver == "inline":
        return InlineSandbox()
    raise PipelineError(f"unknown sandbox driver {driver!r}: use auto, bwrap, docker or inline")
