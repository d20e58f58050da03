"""Continuous backup, measured: RPO under a steady write load, restore time against the number
of segments replayed, and bytes stored per day against full backups alone.

A real single-node cluster, SeaweedFS and a Prefect server (the first full backup goes through
`backup-cluster`); the stream runs in this process (flows.stream.Stream) with its defaults
(a segment every 5 s or 4 MiB). A writer makes `--rate` writes a second for `--seconds`; a
write's RPO is the time from its RPC's answer to the moment the first segment carrying its
audit event is stored in S3 *and* the local copy and recorded. Restores are `jaco restore
--segments DIR --to-revision R` processes, timed whole (the base restored, the segments
verified and replayed, the data dir in place).

    .venv/bin/python -m bench.stream [--seconds 60] [--rate 5] [--state-mib 16]
"""

from __future__ import annotations

import argparse
import base64
import os
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from flows.catalog import Catalog
from flows.params import BackupParams
from flows.storage import open_store
from flows.stream import Sealed, Stream
from infra import prefect_server
from infra.localcluster import JACO, cluster_of
from infra.ports import free_port
from infra.seaweed import running_seaweed
from jaco.client.connection import open_client
from jaco.v1 import jaco_pb2 as pb

BUCKET = "bench"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))] if ordered else 0.0


def keygen(path: Path) -> str:
    subprocess.run(["age-keygen", "-o", str(path)], check=True, capture_output=True)
    line = next(x for x in path.read_text().splitlines() if x.startswith("# public key: "))
    return line.split(": ", 1)[1]


def run(root: Path, seconds: float, rate: float, state_mib: float) -> list[str]:
    lines: list[str] = []
    identity = root / "ops.key"
    recipient = keygen(identity)
    server = prefect_server.start(root / "prefect", scheduler=False)
    with (
        prefect_server.using(server),
        cluster_of(root / "cluster", 1) as cluster,
        running_seaweed(root / "s3") as s3,
    ):
        s3.create_bucket(BUCKET)
        os.environ.update(s3.env())
        os.environ["JACO_TOKEN"] = cluster.token
        os.environ["JACO_AGE_IDENTITY_FILE"] = str(identity)
        node = cluster.nodes["node-1"]
        with open_client(node.server, cluster.token) as client:  # state worth a full backup
            for i in range(int(state_mib * 2)):
                blob = base64.b64encode(os.urandom(384 * 1024)).decode()  # 512 KiB as text
                client.call(
                    "Deploy", pb.DeployRequest(name=f"bulk{i}", image="x:1", env={"B": blob})
                )
        params = BackupParams(
            cluster="bench",
            servers=[node.server],
            bucket=BUCKET,
            recipients=[recipient],
            local_dir=str(root / "local"),
        )
        from flows.backup_flow import backup_cluster

        assert backup_cluster(params, return_state=True).is_completed()
        catalog = Catalog(open_store(f"s3://{BUCKET}"), "jaco", "bench")
        base = catalog.backups()[0]
        stored: list[tuple[int, float]] = []  # (audit seq carried, when stored)
        stop = threading.Event()

        def on_stored(sealed: Sealed) -> None:
            head = sealed.meta.audit_head
            stored.append((head.seq if head else 0, time.monotonic()))

        stream = Stream(params, stop=stop, on_stored=on_stored)
        thread = threading.Thread(target=stream.run, daemon=True)
        thread.start()
        writes: list[tuple[int, float]] = []  # (audit seq of the write, when it was answered)
        started = time.monotonic()
        with open_client(node.server, cluster.token) as client:
            i = 0
            while time.monotonic() - started < seconds:
                name = f"w{i % 20}"
                if i < 20:
                    client.call("Deploy", pb.DeployRequest(name=name, image="x:1", replicas=1))
                else:
                    client.call("Scale", pb.ScaleRequest(name=name, replicas=1 + i % 3))
                done = time.monotonic()
                seq = client.call("StateDigest", pb.StateDigestRequest()).audit_head_seq
                writes.append((seq, done))
                i += 1
                time.sleep(max(0.0, started + i / rate - time.monotonic()))
            last_seq = writes[-1][0]
        deadline = time.monotonic() + 120
        while (not stored or stored[-1][0] < last_seq) and time.monotonic() < deadline:
            time.sleep(0.2)
        stop.set()
        thread.join(60)
        elapsed = time.monotonic() - started
        rpo = []
        for seq, at in writes:
            durable = next((t for s, t in stored if s >= seq), None)
            if durable is not None:
                rpo.append(durable - at)
        chain = catalog.segments(base.stem)
        seg_bytes = sum(r.size for r in chain)
        lines.append(f"state: {state_mib:g} MiB; full backup {base.size / 2**20:.1f} MiB encrypted")
        lines.append(
            f"load: {len(writes)} writes in {seconds:.0f} s ({rate:g}/s); {len(chain)} segments, "
            f"{seg_bytes} bytes"
        )
        lines.append(
            f"RPO (write answered -> its segment stored in S3 + local + catalog): "
            f"p50 {pct(rpo, 50):.2f} s, p99 {pct(rpo, 99):.2f} s, max {max(rpo):.2f} s "
            f"({len(rpo)}/{len(writes)} writes seen stored; goal p99 <= 10 s)"
        )
        per_day = seg_bytes * 86400 / elapsed
        full = base.size
        lines.append(
            f"bytes/day at this load: segments {per_day / 2**20:.1f} MiB + hourly full backups "
            f"{24 * full / 2**20:.2f} MiB; full backups alone at the same RPO (one every "
            f"{max(pct(rpo, 99), 1):.0f} s) {86400 / max(pct(rpo, 99), 1) * full / 2**20:.0f} MiB; "
            f"hourly full backups alone {24 * full / 2**20:.2f} MiB (RPO 1 h)"
        )
        plain = root / "base.tar.gz"
        encrypted = root / "base.tar.gz.age"
        open_store(f"s3://{BUCKET}").get(base.key, encrypted)
        subprocess.run(
            ["age", "-d", "-i", str(identity), "-o", str(plain), str(encrypted)], check=True
        )
        local_chain = root / "local" / "jaco" / "segments" / "bench" / base.stem
        counts = sorted({0, 1, len(chain) // 4, len(chain) // 2, len(chain)})
        for n in counts:
            revision = chain[n - 1].last_revision if n else base.snapshot_index
            data = root / f"restore-{n}"
            ports = [str(free_port()) for _ in range(3)]
            t0 = time.monotonic()
            result = subprocess.run(
                [JACO, "restore", "--input", str(plain), "--name", "node-1", "--data-dir",
                 str(data), "--advertise-host", "127.0.0.1", "--api-port", ports[0],
                 "--etcd-client-port", ports[1], "--etcd-peer-port", ports[2], "--segments",
                 str(local_chain), "--to-revision", str(revision), "--identity", str(identity)],
                capture_output=True, text=True, check=False,
            )  # fmt: skip
            took = time.monotonic() - t0
            assert result.returncode == 0, result.stderr
            replayed = sum(r.revisions for r in chain[:n])
            lines.append(
                f"restore with {n:>4} segments ({replayed:>5} revisions replayed): {took:.2f} s"
            )
    server.stop()
    return lines


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.stream", description=__doc__)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--rate", type=float, default=5, help="writes per second")
    parser.add_argument("--state-mib", type=float, default=16, help="state in the store")
    parser.add_argument("--workdir", default="/var/tmp")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="jaco-bench-stream-", dir=args.workdir) as tmp:
        lines = run(Path(tmp), args.seconds, args.rate, args.state_mib)
    print("\n## Continuous backup\n")
    for line in lines:
        print(line)
    results = Path(__file__).parent / "results"
    results.mkdir(exist_ok=True)
    (results / "stream.txt").write_text("\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
