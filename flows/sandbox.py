"""Ephemeral sandboxes for restore drills, behind one small driver interface.

A restored node carries the production cluster's identity (its CA, its tokens), so a sandbox
must never reach production peers. `BwrapSandbox` (the default on Linux) runs the drill agent in
fresh mount, pid, net, uts, ipc (and cgroup) namespaces: the only network is the sandbox's own
loopback, the data dir is a tmpfs, the installed jaco is bound read-only, and the environment is
cleared. When the agent ends, or its parent dies, the pid namespace and every process and tmpfs
in it go with it. `DockerSandbox` does the same with the image `make image` builds
(infra/image/) on hosts with an engine.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import jaco
from flows.errors import PipelineError


@dataclass
class AgentResult:
    returncode: int
    report: dict[str, Any]
    stderr: str


class Sandbox(Protocol):
    name: str

    def run_agent(self, inputs: Path, args: list[str], timeout: float) -> AgentResult: ...


def _parse_report(stdout: str) -> dict[str, Any]:
    for line in reversed(stdout.strip().splitlines()):
        if line.startswith("{"):
            try:
                report: dict[str, Any] = json.loads(line)
                return report
            except ValueError:
                break
    return {}


def _install_paths() -> list[str]:
    """What the agent needs to run jaco: the interpreter, the venv, an editable checkout."""
    paths = {sys.base_prefix, sys.prefix, sysconfig.get_paths()["purelib"]}
    package_root = Path(jaco.__file__).resolve().parent.parent
    paths.add(str(package_root))  # an editable install imports from the checkout
    return sorted(p for p in paths if Path(p).exists())


class BwrapSandbox:
    def __init__(self, name: str | None = None) -> None:
        self.name = name or f"drill-{uuid.uuid4().hex[:8]}"
        if not shutil.which("bwrap"):
            raise PipelineError("bubblewrap (bwrap) is not installed: apt-get install bubblewrap")

    def command(self, inputs: Path, args: list[str]) -> list[str]:
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
        cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/var/lib/jaco"]
        # bwrap mounts in order: the installation is bound after the fresh tmpfs mounts, so a
        # checkout or venv that lives under /tmp stays visible inside.
        for install in _install_paths():
            cmd += ["--ro-bind", install, install]
        venv_bin = str(Path(sys.prefix) / "bin")
        cmd += [
            "--ro-bind",
            str(inputs),
            "/input",
            "--chdir",
            "/tmp",
            "--clearenv",
            "--setenv",
            "PATH",
            f"{venv_bin}:/usr/bin:/bin",
            "--setenv",
            "HOME",
            "/tmp",
            "--setenv",
            "JACO_DATA_DIR",
            "/var/lib/jaco",
            "--setenv",
            "LANG",
            "C.UTF-8",
            "--",
            sys.executable,
            "-m",
            "flows.drill_agent",
            *args,
        ]
        return cmd

    def run_agent(self, inputs: Path, args: list[str], timeout: float) -> AgentResult:
        try:
            done = subprocess.run(
                self.command(inputs, args),
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            # subprocess.run killed bwrap; --die-with-parent takes the namespace down with it.
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else ""
            raise PipelineError(
                f"the drill in sandbox {self.name} did not finish within "
                f"{timeout:.0f}s; {stderr[-300:]}"
            ) from None
        return AgentResult(done.returncode, _parse_report(done.stdout), done.stderr)


class DockerSandbox:
    """The agent in a throwaway container (`--network none`, tmpfs data dir, read-only root)."""

    def __init__(self, image: str | None = None, name: str | None = None) -> None:
        self.name = name or f"drill-{uuid.uuid4().hex[:8]}"
        # `make image` tags jaco:<version>: the drill runs the same jaco as the worker.
        self.image = image or f"jaco:{jaco.__version__}"
        try:
            import docker  # type: ignore[import-untyped]

            self.client = docker.from_env()
            self.client.ping()
        except Exception as exc:  # noqa: BLE001 - no SDK or no engine
            raise PipelineError(f"the docker driver needs a Docker engine: {exc}") from None

    def run_agent(self, inputs: Path, args: list[str], timeout: float) -> AgentResult:
        container = self.client.containers.run(
            self.image,
            ["python", "-m", "flows.drill_agent", *args],
            name=self.name,
            detach=True,
            network_mode="none",
            read_only=True,
            hostname=self.name,
            tmpfs={"/var/lib/jaco": "", "/tmp": ""},
            volumes={str(inputs): {"bind": "/input", "mode": "ro"}},
            environment={"JACO_DATA_DIR": "/var/lib/jaco"},
        )
        try:
            status = container.wait(timeout=timeout)
            stdout = container.logs(stdout=True, stderr=False).decode(errors="replace")
            stderr = container.logs(stdout=False, stderr=True).decode(errors="replace")
            return AgentResult(int(status["StatusCode"]), _parse_report(stdout), stderr)
        finally:
            container.remove(force=True)


def open_sandbox(driver: str) -> Sandbox:
    if driver == "bwrap":
        return BwrapSandbox()
    if driver == "docker":
        return DockerSandbox()
    raise PipelineError(f"unknown sandbox driver {driver!r}: use bwrap or docker")
