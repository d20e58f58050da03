"""`make demo`: the pipeline the way production runs it, on local defaults, under .demo/.

A 3-node jaco cluster with sample state, a SeaweedFS S3 server, a Prefect server with its UI,
and `python -m deployments.serve` serving the site's deployments (scheduled backup, weekly
and on-demand drills, retention, the watchdog, Prometheus metrics) from a site configuration
whose secrets are references to files. A backup and a restore drill are run *through those
deployments*; then the summary says where to look, and everything stops.

    python -m infra.demo [--keep]     # --keep: leave it all running, and say how to use it
    python -m infra.demo --stop       # stop what --keep left (by the PIDs it recorded)
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from infra import prefect_server
from infra.localcluster import BIN, JACO, Cluster, cluster_of, run, wait_for
from infra.ports import free_port
from infra.prefect_server import PrefectServer
from infra.seaweed import SeaweedS3, running_seaweed

BUCKET = "jaco-backups"
POLL_SECONDS = 2  # how often the runner asks for runs to start (Prefect's default: 10 s)
DEPLOYMENTS = [
    "backup-cluster/backup-demo",
    "drill-restore/weekly-drill-demo",
    "drill-restore/drill-demo",
    "prune-backups/retention-demo",
    "watchdog/jaco-watchdog",
]


def say(text: str = "") -> None:
    print(text, flush=True)


def show(cluster: Cluster, *args: str) -> None:
    say(f"\n$ jaco {' '.join(args)}")
    print(cluster.ok(*args).out, end="", flush=True)


def age_keygen(path: Path) -> str:
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return next(
        line.split(": ", 1)[1]
        for line in path.read_text().splitlines()
        if line.startswith("# public key: ")
    )


def site_config(root: Path, cluster: Cluster, recipient: str) -> Path:
    token = root / "keys" / "demo.token"
    token.write_text(cluster.token + "\n")
    token.chmod(0o600)
    servers = ", ".join(f'"{n.server}"' for n in cluster.nodes.values())
    config = root / "clusters.toml"
    config.write_text(f"""# The demo's site: one cluster, its secrets in files (named here).
[clusters.demo]
servers = [{servers}]
bucket = "{BUCKET}"
recipients = ["{recipient}"]
local_dir = "{root / "backups"}"
drill_workdir = "{root / "drills"}"
drill_rejoin = false
max_backup_age = "1h"
max_drill_age = "7d"
[clusters.demo.secrets]
token = "file:{token}"
verify_identity = "file:{root / "keys" / "verify.key"}"
""")
    return config


def serve(root: Path, config: Path, env: dict[str, str], metrics: int, keep: bool) -> Any:
    log = open(root / "serve.log", "wb")  # noqa: SIM115 - handed to the process
    process = subprocess.Popen(
        [sys.executable, "-m", "deployments.serve", "--config", str(config),
         "--metrics-port", str(metrics), "--poll-seconds", str(POLL_SECONDS)],
        env={**os.environ, **env},
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
        start_new_session=keep,  # --keep: it must not die with this process
    )  # fmt: skip
    log.close()
    return process


def registered() -> bool:
    from prefect import get_client

    with get_client(sync_client=True) as client:
        for name in DEPLOYMENTS:
            client.read_deployment_by_name(name)
    return True


def run_through(name: str) -> Any:
    from prefect.deployments import run_deployment

    say(f"  running {name} ...")
    started = time.monotonic()
    run: Any = run_deployment(name, timeout=900, poll_interval=1)
    state = run.state
    say(f"  {name}: {state.name if state else '?'} in {time.monotonic() - started:.0f}s")
    return run


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    parser.add_argument("--stop", action="store_true", help="stop what --keep left running")
    parser.add_argument("--ui-port", type=int, default=4200)
    parser.add_argument("--root", type=Path, default=Path(".demo"))
    args = parser.parse_args()
    root = args.root.absolute()
    if args.stop:
        sys.exit(stop_kept(root))
    begun = time.monotonic()
    if root.exists():
        stop_kept(root, quiet=True)
        shutil.rmtree(root)
    (root / "keys").mkdir(parents=True, mode=0o700)
    port = args.ui_port if port_free(args.ui_port) else free_port()
    say("Starting a 3-node jaco cluster on 127.0.0.1 (init + 2 joins), and a Prefect server...")
    with (
        prefect_beside(root / "prefect", port, keep=args.keep) as starting,
        cluster_of(root / "cluster", 3, outlive_parent=args.keep) as cluster,
        running_seaweed(root / "s3", keep=args.keep) as s3,
    ):
        show(cluster, "deploy", "web", "--image", "nginx:1.27", "--replicas", "3")
        show(cluster, "deploy", "api", "--image", "ghcr.io/example/api:2.4", "--replicas", "2",
             "--env", "LOG_LEVEL=info")  # fmt: skip
        show(cluster, "route", "add", "web", "--host", "www.example.com", "--deployment", "web")
        show(cluster, "status")
        s3.create_bucket(BUCKET)
        recipient = age_keygen(root / "keys" / "verify.key")
        config = site_config(root, cluster, recipient)
        say(f"\nSeaweedFS S3 on {s3.endpoint}; Prefect server and UI on 127.0.0.1:{port} ...")
        server = starting.result()
        metrics = free_port()
        env = {**s3.env(), **server.env()}
        serving = None
        try:
            serving = serve(root, config, env, metrics, args.keep)
            with prefect_server.using(server):
                code = demonstrate(root, cluster, server, serving, config, env, metrics)
                if code == 0:
                    say(where_to_look(kept=args.keep))
            if args.keep and code == 0:
                keep_running(root, cluster, s3, server, serving, config, env, metrics)
                return
        finally:
            if serving is not None and not server.kept:
                stop(serving)
    if code == 0:
        say(f"\nAll done in {time.monotonic() - begun:.0f}s; everything is stopped.")
    sys.exit(code)


@contextlib.contextmanager
def prefect_beside(home: Path, port: int, keep: bool) -> Iterator[Future[PrefectServer]]:
    """The Prefect server and its UI, started while the cluster starts: its new database's
    migrations take most of its 15-20 s. Stopped on the way out, whatever happened, unless
    `keep_running` recorded it for --stop."""
    server = prefect_server.launch(home, port, ui=True, outlive_parent=keep)

    def answering() -> PrefectServer:
        server.wait_healthy()
        return server

    with ThreadPoolExecutor(1) as pool:
        try:
            yield pool.submit(answering)
        finally:
            if not server.kept:
                server.stop()  # a wait for it then ends at once


def demonstrate(
    root: Path, cluster: Cluster, server: Any, serving: Any, config: Path,
    env: dict[str, str], metrics: int,
) -> int:  # fmt: skip
    say(f"\n$ python -m deployments.serve --config {config} --metrics-port {metrics}")
    wait_for(registered, 180, f"the deployments to be served (see {root / 'serve.log'})")
    say(f"Serving {len(DEPLOYMENTS)} deployments: {', '.join(DEPLOYMENTS)}")
    say("\nA backup, then a restore drill, run through those deployments:")
    backup = run_through("backup-cluster/backup-demo")
    drill = run_through("drill-restore/drill-demo")
    ok = all(r.state is not None and r.state.is_completed() for r in (backup, drill))
    listed = run([JACO, "backup", "ls", "--config", str(config)], env=env)
    say(f"\n$ jaco backup ls --config {config}")
    print(listed.out, end="", flush=True)
    say(drill_summary(config, env))
    if not ok:
        failed = next(r for r in (backup, drill) if not r.state or not r.state.is_completed())
        say(f"\nThe demo FAILED: {failed.name}: {failed.state.message if failed.state else ''}")
        say(f"(logs: {root / 'serve.log'}, {server.log})")
        return 1
    return 0


def where_to_look(kept: bool) -> str:
    """What the Prefect UI and the metrics show; their addresses only with --keep, below
    (without it the demo stops them as soon as this is printed)."""
    shows = """
  Deployments — backup-demo (hourly), weekly-drill-demo, drill-demo (Run → Quick run or
    Custom run), retention-demo, jaco-watchdog (every 5 minutes)
  Runs — the backup and the drill just run; open one, then its Artifacts tab for the report
    and the tables rendered from the catalog (jaco-backups-demo, jaco-drills-demo)
and the metrics endpoint serves jaco_backup_last_verified_timestamp_seconds, ..."""
    if kept:
        return f"\nIn the Prefect UI (its address below):{shows}"
    return f"""
With --keep (`python -m infra.demo --keep`) everything stays running, and the Prefect UI
shows:{shows}"""


def drill_summary(config: Path, env: dict[str, str]) -> str:
    described = run([JACO, "backup", "ls", "--json", "--config", str(config)], env=env)
    try:
        drills = [d for c in json.loads(described.out) for b in c["backups"] for d in b["drills"]]
    except (ValueError, KeyError):
        return "(the catalog could not be read)"
    if not drills:
        return "No drill recorded."
    last = max(drills, key=lambda d: d["at"])
    result = "PASSED" if last["passed"] else f"FAILED ({', '.join(last['failed_checks'])})"
    image = f", image {last['image']}" if last.get("image") else ""
    rto = f", RTO {last['rto_seconds']:.1f}s" if last.get("rto_seconds") else ""
    return f"\nRestore drill of demo: {result} in a {last['driver']} sandbox{image}{rto}"


def keep_running(
    root: Path, cluster: Cluster, s3: SeaweedS3, server: PrefectServer, serving: Any,
    config: Path, env: dict[str, str], metrics: int,
) -> None:  # fmt: skip
    pids = {  # in the order --stop stops them: the server's users before the server
        "deployments.serve": serving.pid,
        "prefect server": server.process.pid,
        **{f"jacod {n.name}": n.process.pid for n in cluster.nodes.values() if n.process},
        "s3": s3.process.pid if s3.process else 0,
    }
    (root / "pids.json").write_text(json.dumps(pids))
    server.kept = True  # leaving the context must not stop it, nor the deployments
    for node in cluster.nodes.values():
        node.process = None  # detach: leaving the context must not stop them
    s3.process = None
    node1 = cluster.nodes["node-1"].server
    exports = " ".join(f"{k}={v}" for k, v in env.items() if k.startswith(("AWS_", "PREFECT_")))
    say(f"""
Still running (PIDs in {root / "pids.json"}): the cluster, S3 at {s3.endpoint}, the Prefect UI
at {server.ui} and the deployments. In a shell:
  export JACO_TOKEN=$(cat {root / "keys" / "demo.token"}) JACO_SERVER={node1} {exports}
  {BIN / "jaco"} status
  {BIN / "jaco"} backup ls --config {config}
  {BIN / "prefect"} deployment run drill-restore/drill-demo
  curl -s http://127.0.0.1:{metrics}/metrics | grep ^jaco_
Stop it all: {sys.executable} -m infra.demo --stop --root {root}""")


def stop(process: Any) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def stop_kept(root: Path, quiet: bool = False) -> int:
    pids_file = root / "pids.json"
    if not pids_file.exists():
        if not quiet:
            print(f"nothing to stop: no {pids_file}", file=sys.stderr)
        return 0 if quiet else 1
    for name, pid in json.loads(pids_file.read_text()).items():
        with contextlib.suppress(ProcessLookupError, ValueError):
            os.kill(int(pid), signal.SIGTERM)
            deadline = time.monotonic() + 20
            while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
                time.sleep(0.2)
            if Path(f"/proc/{pid}").exists():
                os.kill(int(pid), signal.SIGKILL)
            if not quiet:
                say(f"stopped {name} (pid {pid})")
    pids_file.unlink()
    return 0


def port_free(port: int) -> bool:
    import socket

    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


if __name__ == "__main__":
    main()
