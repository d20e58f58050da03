"""`make demo`: the whole story on local defaults, everything on 127.0.0.1 under .demo/.

A 3-node jaco cluster with sample state, a SeaweedFS S3 server, a Prefect server with its UI,
then the backup-cluster flow (take-backup → encrypt → upload → local copy → verify → prune)
followed by a restore drill in a bubblewrap sandbox, and a summary of where to look.
`--keep` leaves it all running (the script prints how to use and stop it).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from infra.localcluster import Cluster, cluster_of, free_port, wait_for
from infra.seaweed import running_seaweed

ROOT = Path(".demo").resolve()
BUCKET = "jaco-backups"


def show(cluster: Cluster, *args: str) -> None:
    print(f"\n$ jaco {' '.join(args)}", flush=True)
    print(cluster.ok(*args).out, end="", flush=True)


def port_free(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def start_prefect(port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "PREFECT_HOME": str(ROOT / "prefect"),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "PREFECT_UI_API_URL": f"http://127.0.0.1:{port}/api",
    }
    log = open(ROOT / "prefect.log", "wb")  # noqa: SIM115 - handed to the server
    server = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "prefect"),
            "server",
            "start",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        env=env,
        stdout=log,
        stderr=log,
    )
    log.close()

    def healthy() -> bool:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/health", timeout=2) as r:
            return bool(r.status == 200)

    wait_for(healthy, 120, "the Prefect server")
    return server


def age_keygen(path: Path) -> str:
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    return next(
        line.split(": ", 1)[1]
        for line in path.read_text().splitlines()
        if line.startswith("# public key: ")
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--keep", action="store_true", help="leave everything running")
    parser.add_argument("--ui-port", type=int, default=4200)
    args = parser.parse_args()
    if ROOT.exists():
        shutil.rmtree(ROOT)
    (ROOT / "keys").mkdir(parents=True, mode=0o700)
    port = args.ui_port if port_free(args.ui_port) else free_port()
    print("Starting a 3-node jaco cluster on 127.0.0.1 (init + 2 joins)...", flush=True)
    with (
        cluster_of(ROOT / "cluster", 3, outlive_parent=args.keep) as cluster,
        running_seaweed(ROOT / "s3") as s3,
    ):
        show(cluster, "deploy", "web", "--image", "nginx:1.27", "--replicas", "3")
        show(
            cluster,
            "deploy",
            "api",
            "--image",
            "ghcr.io/example/api:2.4",
            "--replicas",
            "2",
            "--env",
            "LOG_LEVEL=info",
        )
        show(cluster, "route", "add", "web", "--host", "www.example.com", "--deployment", "web")
        show(cluster, "cluster", "status")
        show(cluster, "status")
        s3.create_bucket(BUCKET)
        print(
            f"\nSeaweedFS S3 on {s3.endpoint}; starting Prefect on 127.0.0.1:{port}...", flush=True
        )
        prefect = start_prefect(port)
        recipient = age_keygen(ROOT / "keys" / "ops.key")
        os.environ.update(s3.env())
        os.environ.update(
            {
                "PREFECT_API_URL": f"http://127.0.0.1:{port}/api",
                "JACO_TOKEN": cluster.token,
                "JACO_AGE_IDENTITY_FILE": str(ROOT / "keys" / "ops.key"),
            }
        )
        try:
            code = run_pipeline(cluster, recipient, port)
            if args.keep:
                keep_running(cluster, s3.endpoint, port, prefect)
                return
        finally:
            if not args.keep:
                _flush_prefect_logs()  # else they are sent at exit, to a server gone by then
                prefect.terminate()
                prefect.wait(30)
    sys.exit(code)


def _flush_prefect_logs() -> None:
    import logging

    from prefect.logging.handlers import APILogHandler

    for handler in logging.getLogger("prefect").handlers + logging.getLogger().handlers:
        if isinstance(handler, APILogHandler):
            with contextlib.suppress(Exception):
                handler.flush()


def run_pipeline(cluster: Cluster, recipient: str, port: int) -> int:
    from flows.backup_flow import backup_cluster
    from flows.params import BackupParams

    params = BackupParams(
        cluster="demo",
        servers=[n.server for n in cluster.nodes.values()],
        bucket=BUCKET,
        recipients=[recipient],
        local_dir=str(ROOT / "backups"),
        drill_every=1,
    )
    print(
        "\nRunning backup-cluster (take-backup → encrypt → upload → local copy → verify → "
        "prune) and a restore drill...",
        flush=True,
    )
    started = time.monotonic()
    state = backup_cluster(params, return_state=True)
    if not state.is_completed():
        print(f"\nThe pipeline FAILED: {state.message}")
        return 1
    result = state.result()
    print(f"\nBackup of cluster {result['cluster_id']} at index {result['snapshot_index']}:")
    print(f"  s3://{result['bucket']}/{result['key']}  ({result['size']} bytes, age-encrypted)")
    print(f"  local copy {result['local_copy']}")
    for row in result["stages"]:
        print(f"  {row['stage']:<12} {row['seconds']:>7}s")
    drill = result["drill"]
    print(f"\nRestore drill in sandbox {drill['sandbox']}: RTO {drill['rto_seconds']:.1f}s")
    for check in drill["checks"]:
        print(f"  [{'pass' if check['ok'] else 'FAIL'}] {check['name']}: {check['detail']}")
    print(
        f"\nAll done in {time.monotonic() - started:.0f}s. In the Prefect UI "
        f"(http://127.0.0.1:{port}): Runs → backup-cluster / drill-restore, and Artifacts → "
        "jaco-backup-demo, jaco-backups-demo, jaco-drill-demo, jaco-drills-demo."
    )
    return 0


def keep_running(
    cluster: Cluster, endpoint: str, port: int, prefect: subprocess.Popen[bytes]
) -> None:
    token_file = ROOT / "admin.token"
    token_file.write_text(cluster.token + "\n")
    token_file.chmod(0o600)
    pids = [str(n.process.pid) for n in cluster.nodes.values() if n.process]
    print(
        f"\nStill running: Prefect UI http://127.0.0.1:{port} and jacod PIDs "
        f"{' '.join(pids)}.\n  export JACO_TOKEN=$(cat {token_file}) "
        f"JACO_SERVER={cluster.nodes['node-1'].server}\n  jaco status\n"
        f"Stop with: kill {' '.join(pids)} {prefect.pid}. (S3 at {endpoint} stops now.)"
    )
    for node in cluster.nodes.values():
        node.process = None  # detach: leaving the context must not stop them


if __name__ == "__main__":
    main()
