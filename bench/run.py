"""Benchmarks: every stage of the backup pipeline against its reference, one table per size.

    python -m bench.run                      # random records at 64 MiB, 512 MiB and 2 GiB,
                                             # small records at 64 and 512 MiB, then the
                                             # cost-growth table (bench.growth)
    python -m bench.run --quick              # 64 MiB, both data sets, growth at 10⁴ keys
    python -m bench.run --size 64 --size 512 # some sizes
    python -m bench.run --dataset small      # one data set; --keys 0: no growth table
    python -m bench.run --size 64 --repeat 3 # median of 3 runs per stage

For each size a real single-node jaco cluster is built (jacod + its etcd, 8 GiB backend quota)
with real deployments through the API (a long audit log), then filled to the size with one of
two data sets: incompressible bulk records under /jaco/v1/bulk/ (`bulk`, the worst case for
gzip), or realistic small JSON records (`small`, bench.realistic). Each measured stage runs in
its own process (jaco's Python stages through `bench.stage`, the references as their own
binaries) and its peak RSS is that process's own. Results are printed and written to
bench/results/<timestamp>.json. Targets are measured and reported, never asserted. Everything
listens on 127.0.0.1 and is stopped by PID.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench import realistic
from infra import prefect_server
from infra.localcluster import Cluster, Node, free_port, wait_for
from infra.seaweed import SeaweedS3

MIB = 1024 * 1024
PY = sys.executable
BIN = Path(PY).parent
RESULTS = Path(__file__).parent / "results"
# Restore to READY: how often each side is asked whether it is up (every 0.3 s until stop 38,
# which added up to that much to either side at random; docs/benchmarks.md, bench.node_ready)
READY_POLL = 0.02
BUCKET = "bench"
QUOTA = 8 * 1024**3
DEPLOYS = {64: 200, 512: 300, 2048: 400}
SMALL_RECORD_BYTES = 420  # snapshot bytes per live small record, history included (measured)
DATASETS = {"bulk": 48, "small": 0}  # --dataset: KiB per record (0: bench.realistic's records)
# The backup against etcdctl's save, the goal the issue leads with, is the median of at least
# this many alternating rounds at every size: single runs at 512 MiB read 1.70x and 1.42x
# in an hour where alternating A/Bs of the same code read 1.16-1.26x (stop 44).
SNAPSHOT_ROUNDS = 3
# Seconds between one side's end and the next side's start. This VM hands memory freed for 2 s
# back to its host (free page reporting) and charges about ten times a copy for touching it
# again; a side that started at once would write into the pages the side before it had just
# freed (its output file, jacod's scratch copy), warm, and which side found how many decided
# a second or more at 2 GiB (docs/benchmarks.md, stop 47). Settled, every side starts cold, as
# a scheduled backup does. JACO_BENCH_SETTLE=0 measures the old way (warm), for comparison.
SETTLE = float(os.environ.get("JACO_BENCH_SETTLE", "5"))


def settled(*outputs: Path) -> None:
    """Remove a side's last outputs, then wait SETTLE seconds before it runs again."""
    for path in outputs:
        path.unlink(missing_ok=True)
    time.sleep(SETTLE)


def cold(side: Callable[[], dict]) -> Callable[[], dict]:
    """`side`, each time after SETTLE seconds: restore to READY and its reference (each
    removes what it wrote) start on memory this VM has taken back, as a restore on a recovery
    host does, not on the pages the side before them just freed."""

    def run() -> dict:
        settled()
        return side()

    return run


_no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def save_results(kind: str, started: dt.datetime, key: str, results: Any) -> Path:
    """bench/results/KIND-<start>.json, {"started": …, key: results}; its path is printed."""
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{kind}-{started:%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps({"started": started.isoformat(), key: results}, indent=2))
    print(f"\nwrote {out}")
    return out


# -- measuring one process ------------------------------------------------------------------


def measure(
    cmd: list[str], env: dict[str, str] | None = None, timeout: float = 1800, output: bool = False
) -> dict:
    """Run `cmd` to completion; wall seconds, its CPU seconds (user + system) and the peak RSS
    the kernel recorded for it (and with `output`, all it wrote to stdout and stderr)."""
    # Through GNU time, not fork+wait4 from here: Linux carries a process's peak RSS across
    # exec, so any child forked from this (large) process would report at least our own peak.
    # time is small; the peak it reports is the child's own (plus children it reaped itself,
    # which is why jaco's CLIs also report their RUSAGE_SELF).
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        with tempfile.NamedTemporaryFile(prefix="jaco-bench-rss-", delete=False) as f:
            rss_file = Path(f.name)
        # Every stage starts with no dirty pages of the previous one still being written back
        # (uploads land on this disk too, through SeaweedFS): order must not pick winners.
        os.sync()
        started = time.monotonic()
        proc = subprocess.Popen(
            ["/usr/bin/time", "-f", "%M %U %S", "-o", str(rss_file), *cmd],
            env={**os.environ, **(env or {})},
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=err,
        )
        proc.wait()
        seconds = time.monotonic() - started
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
        lines = rss_file.read_text().split() if rss_file.exists() else ["0"] * 3
        rss_file.unlink(missing_ok=True)
    if proc.returncode != 0:
        raise RuntimeError(
            f"{' '.join(cmd[:4])}… exited {proc.returncode}: "
            f"{stderr.decode(errors='replace')[-800:]}"
        )
    result = {
        "seconds": seconds,
        "cpu_seconds": float(lines[-2]) + float(lines[-1]),
        "rss_kib": int(lines[-3]),
        "stdout": stdout.decode()[-2000:],
    }
    if output:
        result["output"] = (stdout + stderr).decode(errors="replace")
    return result


def stage(
    name: str,
    args: dict[str, Any],
    env: dict[str, str],
    work: Path,
    output: bool = False,
    tree: Path | None = None,
) -> dict:
    """A Python stage in its own process (bench.stage); seconds are the call's own. With
    `tree`, that tree's code first (`-P`: not this directory's, which `-m` would put first);
    a module the tree lacks still comes from this checkout's install (copy jaco/_native*.so
    into the tree)."""
    result_file = work / f".result-{name}.json"
    own = ["-P"] if tree else []
    cmd = [PY, *own, "-m", "bench.stage", name, json.dumps(args), str(result_file)]
    outer = measure(cmd, {**env, "PYTHONPATH": str(tree)} if tree else env, output=output)
    inner = json.loads(result_file.read_text())
    result_file.unlink()
    kept = {"output": outer["output"]} if output else {}
    return {**inner, "wall_seconds": outer["seconds"], "cpu_seconds": outer["cpu_seconds"], **kept}


def jaco_cli(args: list[str], env: dict[str, str], work: Path) -> dict:
    """The `jaco` CLI in-process in a child: wall seconds incl. startup, its own peak RSS."""
    result_file = work / ".result-cli.json"
    outer = measure([PY, "-m", "bench.stage", "cli", str(result_file), "--", *args], env)
    inner = json.loads(result_file.read_text())
    result_file.unlink()
    return {"seconds": outer["seconds"], "rss_kib": inner["rss_kib"], "stdout": outer["stdout"]}


def repeat(n: int, fn: Callable[[], dict]) -> dict:
    return _summary([fn() for _ in range(n)])


def turning(order: list[str], rounds: int) -> Iterator[tuple[int, str]]:
    """(round, label) for `rounds` rounds of every label in `order`, the order turning by one
    each round, so that no side always runs first (see `alternating`)."""
    for round_ in range(rounds):
        turn = round_ % len(order)
        for label in order[turn:] + order[:turn]:
            yield round_, label


def alternating(n: int, ours: Callable[[], dict], ref: Callable[[], dict]) -> tuple[dict, dict]:
    """`repeat` of jaco's stage and its reference, interleaved: the reference first in even
    rounds, jaco first in odd ones. This VM charges the first writer of memory it has not
    touched lately (docs/benchmarks.md, stop 30), so whichever runs second finds the pages
    the first just freed; in a fixed order one side always did. Use an even `n` (or 3). The
    backup, restore to READY and their references also wait SETTLE seconds after removing
    their last output (`settled`, `cold`), so that none writes into pages just freed."""
    runs: dict[str, list[dict]] = {"ours": [], "ref": []}
    for round_ in range(n):
        order = [("ref", ref), ("ours", ours)]
        for side, fn in order if round_ % 2 == 0 else order[::-1]:
            runs[side].append(fn())
    return _summary(runs["ours"]), _summary(runs["ref"])


def _summary(runs: list[dict]) -> dict:
    best = dict(runs[-1])
    best["seconds"] = statistics.median(r["seconds"] for r in runs)
    best["rss_kib"] = max(r["rss_kib"] for r in runs)
    best["runs"] = [round(r["seconds"], 3) for r in runs]
    return best


def in_sequence(*steps: dict) -> dict:
    """Stages run one after the other, as one: their seconds added, the largest peak RSS."""
    return {
        "seconds": sum(s["seconds"] for s in steps),
        "rss_kib": max(s["rss_kib"] for s in steps),
        "steps": [round(s["seconds"], 3) for s in steps],
    }


def decrypt_and_list(key_file: Path, cipher: Path) -> dict:
    """`age -d | tar -tzf -` of a downloaded archive: verify's decrypt-and-check done by the
    tools, streaming as verify does (verify also hashes twice; the reference does not)."""
    pipe = 'age -d -i "$0" "$1" | tar -tzf - >/dev/null'
    return measure(["sh", "-c", pipe, str(key_file), str(cipher)])


def reset_peak(pid: int) -> None:
    """Reset the kernel's peak-RSS mark of a running process (Linux clear_refs 5)."""
    try:
        Path(f"/proc/{pid}/clear_refs").write_text("5")
    except OSError:
        pass


def peak_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    return 0


def stop_pid(proc: subprocess.Popen[bytes], timeout: float = 30) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# -- building a cluster of a given size -------------------------------------------------------


def endpoint_status(node: Node) -> Any:
    return json.loads(
        measure([*node.etcdctl_command(), "endpoint", "status", "-w", "json"])["stdout"]
    )


def fill_store(node: Node, keys: int, random_mib: int) -> str:
    """The node's store filled with `random_mib` MiB of random 48 KiB records or, if that is 0,
    `keys` small ones (bench.realistic); what was built, as the benches print it."""
    if random_mib:
        return f"{asyncio.run(fill_random(node, random_mib * MIB, 48 * 1024))} keys"
    return str(asyncio.run(realistic.fill(node, keys)))


async def fill_random(node: Node, total: int, value_bytes: int) -> int:
    from jaco.model.etcd import Etcd, op_put
    from jaco.node.config import DataDir

    etcd = Etcd(DataDir(node.data_dir).etcd_socket, timeout=60)
    per_txn = max(1, (1300 * 1024) // (value_bytes + 64))
    keys = max(1, total // value_bytes)
    gate = asyncio.Semaphore(4)

    async def batch(first: int) -> None:
        async with gate:
            ops = [
                op_put(f"/jaco/v1/bulk/{i:08d}", os.urandom(value_bytes))
                for i in range(first, min(first + per_txn, keys))
            ]
            await etcd.txn([], ops)

    try:
        await asyncio.gather(*(batch(i) for i in range(0, keys, per_txn)))
    finally:
        await etcd.close()
    return keys


class WriteProbe:
    """Write latency as the API's callers see it: `Scale` calls of one deployment of its own
    (created here), between 1 and 2 replicas, one after another. Each call changes a replica,
    its placement, its IP and the audit log through jacod and etcd. A call up reads the
    placement and IPAM tables, a call down does not (its median about a third lower), and
    each costs the same however many came before it; a new deployment per call read a table
    one record longer each time (docs/benchmarks.md, "Write latency at 2 GiB, measured
    again")."""

    NAME = "write-probe"

    def __init__(self, client: Any) -> None:
        from jaco.v1 import jaco_pb2 as pb

        self._client, self._pb = client, pb
        client.call("Deploy", pb.DeployRequest(name=self.NAME, image="nginx:1.27", replicas=1))
        self._replicas = 1

    def latencies(
        self, n: int, until: Any = None, starts: list[float] | None = None
    ) -> list[float]:
        """`n` calls, or calls until `until()` is false and `n` are done, in seconds each;
        each call's start (time.perf_counter) goes to `starts` if given."""
        out: list[float] = []
        while len(out) < n or (until is not None and until()):
            self._replicas = 3 - self._replicas
            started = time.perf_counter()
            self._client.call(
                "Scale", self._pb.ScaleRequest(name=self.NAME, replicas=self._replicas)
            )
            out.append(time.perf_counter() - started)
            if starts is not None:
                starts.append(started)
        return out

    def during(self, cmd: list[str], env: dict[str, str]) -> During:
        """At least 20 calls, and calls for as long as `cmd` runs: each call's latency and
        start, and when `cmd` ended, as it ended (a call may be under way then)."""
        began, starts, ended = time.perf_counter(), [], []
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        waiter = threading.Thread(target=lambda: (proc.wait(), ended.append(time.perf_counter())))
        waiter.start()
        latencies = self.latencies(20, until=lambda: proc.poll() is None, starts=starts)
        waiter.join()
        return During(latencies, [s - began for s in starts], ended[0] - began, proc.returncode)


@dataclass(frozen=True)
class During:
    """What WriteProbe.during saw, in seconds from the command's start."""

    latencies: list[float]
    started_at: list[float]
    seconds: float
    returncode: int


def build(root: Path, size_mib: int, value_kib: int) -> tuple[Cluster, dict[str, Any]]:
    from jaco.client.connection import open_client
    from jaco.v1 import jaco_pb2 as pb

    root.mkdir(parents=True)
    cluster = Cluster(root)
    cluster.init("node-1")
    node = cluster.nodes["node-1"]
    started = time.monotonic()
    with open_client(node.server, cluster.token) as client:
        for i in range(DEPLOYS.get(size_mib, 300)):
            client.call(
                "Deploy",
                pb.DeployRequest(
                    name=f"app-{i}", image=f"registry.local/app-{i}:1.{i}", replicas=1 + i % 3
                ),
            )
    deploy_seconds = time.monotonic() - started
    status = endpoint_status(node)
    db = status[0]["Status"]["dbSize"]
    started = time.monotonic()
    if value_kib:
        keys = asyncio.run(fill_random(node, size_mib * MIB - db, value_kib * 1024))
    else:  # the realistic data set: small JSON records, snapshot bytes per live record measured
        filled = asyncio.run(realistic.fill(node, (size_mib * MIB - db) // SMALL_RECORD_BYTES))
        keys = filled["small_keys"]
    fill_seconds = time.monotonic() - started
    status = endpoint_status(node)
    return cluster, {
        "deployments": DEPLOYS.get(size_mib, 300),
        "deploy_seconds": round(deploy_seconds, 1),
        "bulk_keys": keys,
        "bulk_value_kib": value_kib,
        "fill_seconds": round(fill_seconds, 1),
        "db_size": status[0]["Status"]["dbSize"],
        "revision": status[0]["Status"]["header"]["revision"],
    }


# -- the stages --------------------------------------------------------------------------------


def http_ok(url: str) -> bool:
    """Whether `url` answers 200 (no proxy: the targets are on loopback)."""
    with _no_proxy.open(url, timeout=2) as resp:
        return bool(resp.status == 200)


def wait_http(url: str, timeout: float = 300) -> None:
    wait_for(lambda: http_ok(url), timeout, url, every=READY_POLL)


def restored_ready(api: int, token: str) -> bool:
    """Whether the node "restored" serving on 127.0.0.1:`api` reports itself READY."""
    from jaco.client.connection import open_client
    from jaco.v1 import jaco_pb2 as pb

    with open_client(f"127.0.0.1:{api}", token, timeout=5) as client:
        reply = client.call("ClusterStatus", pb.ClusterStatusRequest(), timeout=5)
    return any(n.name == "restored" and n.state == "READY" for n in reply.nodes)


def bare_etcd(snapshot: Path, data: Path, client: int, peer: int) -> tuple[list[str], list[str]]:
    """The reference's two commands: `etcdctl snapshot restore` of `snapshot` into `data`, then
    a bare etcd on it, its client API on 127.0.0.1:`client` (plain HTTP), its log JSON lines."""
    peer_url = f"http://127.0.0.1:{peer}"
    cluster = [f"--initial-cluster=bare={peer_url}", f"--initial-advertise-peer-urls={peer_url}"]
    restore = ["etcdctl", "snapshot", "restore", str(snapshot), "--name", "bare"]
    etcd = ["etcd", "--name=bare", f"--data-dir={data}", f"--listen-peer-urls={peer_url}"]
    etcd += [f"--listen-client-urls=http://127.0.0.1:{client}"]
    etcd += [f"--advertise-client-urls=http://127.0.0.1:{client}"]
    etcd += [f"--quota-backend-bytes={QUOTA}", "--logger=zap", "--log-outputs=stderr"]
    return restore + [f"--data-dir={data}", *cluster], etcd + cluster


def restore_jaco(archive: Path, work: Path, token: str) -> dict:
    data = work / "restored"
    api, client_port, peer = free_port(), free_port(), free_port()
    started = time.monotonic()
    cli = jaco_cli(
        [
            "restore",
            "--input",
            str(archive),
            "--name",
            "restored",
            "--data-dir",
            str(data),
            "--advertise-host",
            "127.0.0.1",
            "--api-port",
            str(api),
            "--etcd-client-port",
            str(client_port),
            "--etcd-peer-port",
            str(peer),
        ],
        {},
        work,
    )
    restore_seconds = time.monotonic() - started
    log = open(work / "restored.jacod.log", "ab")  # noqa: SIM115
    jacod = subprocess.Popen(
        [str(BIN / "jacod"), "--name", "restored", "--data-dir", str(data)]
        + ["--listen", f"127.0.0.1:{api}"],
        stdout=log,
        stderr=log,
        stdin=subprocess.DEVNULL,
    )
    log.close()
    try:
        wait_for(lambda: restored_ready(api, token), 600, "restored node READY", every=READY_POLL)
        seconds = time.monotonic() - started
        jacod_kib = peak_kib(jacod.pid)
    finally:
        stop_pid(jacod)
        shutil.rmtree(data, ignore_errors=True)
    return {
        "seconds": seconds,
        "restore_seconds": restore_seconds,
        "rss_kib": cli["rss_kib"],
        "jacod_rss_kib": jacod_kib,
    }


def restore_reference(snapshot: Path, work: Path) -> dict:
    data = work / "bare-etcd"
    client_port = free_port()
    restore, start = bare_etcd(snapshot, data, client_port, free_port())
    started = time.monotonic()
    tool = measure(restore, {"ETCDCTL_API": "3"})
    log = open(work / "bare-etcd.log", "ab")  # noqa: SIM115
    etcd = subprocess.Popen(start, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
    log.close()
    try:
        wait_http(f"http://127.0.0.1:{client_port}/health")
        seconds = time.monotonic() - started
        etcd_kib = peak_kib(etcd.pid)
    finally:
        stop_pid(etcd)
        shutil.rmtree(data, ignore_errors=True)
    return {"seconds": seconds, "rss_kib": tool["rss_kib"], "etcd_rss_kib": etcd_kib}


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


@contextlib.contextmanager
def services(root: Path) -> Iterator[dict[str, Any]]:
    """What the pipeline's stages need, under `root`: an age key, a SeaweedFS S3 with the
    bench's bucket and a Prefect server; stopped on the way out."""
    root.mkdir(parents=True, exist_ok=True)
    s3 = SeaweedS3(root / "s3")
    prefect: prefect_server.PrefectServer | None = None
    try:
        key_file = root / "age.key"
        subprocess.run(["age-keygen", "-o", str(key_file)], check=True, capture_output=True)
        recipient = next(
            line.split(": ", 1)[1]
            for line in key_file.read_text().splitlines()
            if "public key" in line
        )
        s3.start()
        s3.create_bucket(BUCKET)
        prefect = prefect_server.start(root / "prefect")
        yield {
            "root": root,
            "s3": s3,
            "key_file": key_file,
            "recipient": recipient,
            "prefect_url": prefect.url,
        }
    finally:
        if prefect is not None:
            prefect.stop()
        s3.stop()


def stage_env(ctx: dict[str, Any], token: str, server: str) -> dict[str, str]:
    """The environment of a stage process that talks to one node, the S3 and Prefect."""
    return {
        "JACO_TOKEN": token,
        "JACO_SERVER": server,
        "JACO_AGE_IDENTITY_FILE": str(ctx["key_file"]),
        **ctx["s3"].env(),
        "NO_PROXY": "127.0.0.1,localhost",
        "no_proxy": "127.0.0.1,localhost",
        "PREFECT_API_URL": ctx["prefect_url"],
        "PREFECT_HOME": str(ctx["root"] / "prefect"),
        "PREFECT_LOGGING_LEVEL": "WARNING",
        # A drill of 10⁷ keys restores 8.5 GiB into its sandbox's tmpfs, past the default cap.
        "JACO_DRILL_TMPFS": os.environ.get("JACO_DRILL_TMPFS", "64g"),
    }


def run_size(size_mib: int, ctx: dict[str, Any], reps: int, value_kib: int) -> dict[str, Any]:
    from jaco.client.connection import open_client

    root = ctx["root"] / f"size-{size_mib}-{value_kib}"
    print(f"\n== {size_mib} MiB ({_dataset(value_kib)}): building the cluster …", flush=True)
    cluster, built = build(root, size_mib, value_kib)
    node = cluster.nodes["node-1"]
    work = root / "work"
    work.mkdir()
    env = stage_env(ctx, cluster.token, node.server)
    print(f"   built: {built}", flush=True)
    jacod_pid = node.process.pid if node.process else 0
    rows: dict[str, Any] = {"built": built}
    try:
        # snapshot to file
        ref_snap = work / "etcdctl.db"

        def save() -> dict:
            settled(ref_snap)
            return measure(node.snapshot_save_command(ref_snap), {"ETCDCTL_API": "3"})

        archive = work / "cluster.tar.gz"
        jacod_peaks: list[int] = []

        def backup() -> dict:
            settled(archive)
            reset_peak(jacod_pid)
            r = jaco_cli(["backup", "--output", str(archive)], env, work)
            jacod_peaks.append(peak_kib(jacod_pid))
            return r

        ours, ref = alternating(max(reps, SNAPSHOT_ROUNDS), backup, save)
        snap_size = ref_snap.stat().st_size
        rows["snapshot"] = {
            "bytes": snap_size,
            "jaco": ours,
            "ref": ref,
            "jacod_rss_kib": max(jacod_peaks),
        }
        print(f"   snapshot: {ours['seconds']:.2f}s vs {ref['seconds']:.2f}s", flush=True)

        # encrypt
        arch_size = archive.stat().st_size
        recipients = [ctx["recipient"]]

        def encrypt() -> dict:
            (work / "cluster.tar.gz.age").unlink(missing_ok=True)
            return stage("encrypt", {"archive": str(archive), "recipients": recipients}, env, work)

        enc = repeat(reps, encrypt)
        age_out = work / "age.out"
        age = repeat(
            reps, lambda: measure(["age", "-r", recipients[0], "-o", str(age_out), str(archive)])
        )
        cp = repeat(reps, lambda: measure(["cp", str(archive), str(work / "copy.out")]))
        age_out.unlink()
        (work / "copy.out").unlink()
        rows["encrypt"] = {"bytes": arch_size, "jaco": enc, "ref": age, "cp": cp}
        print(f"   encrypt: {enc['seconds']:.2f}s vs age {age['seconds']:.2f}s", flush=True)

        # upload / download
        cipher = Path(enc["path"])
        cipher_size = cipher.stat().st_size
        key = f"bench/{size_mib}/cluster.tar.gz.age"
        metadata = {"plaintext-sha256": enc["plaintext_sha256"]}
        metadata["ciphertext-sha256"] = enc["ciphertext_sha256"]
        up_args = {"store": f"s3://{BUCKET}", "path": str(cipher), "key": key, "metadata": metadata}
        up = repeat(reps, lambda: stage("upload", up_args, env, work))
        ref_key = f"ref/{size_mib}/cluster.tar.gz.age"
        b_up_args = {"bucket": BUCKET, "path": str(cipher), "key": ref_key}
        b_up = repeat(reps, lambda: stage("boto3-upload", b_up_args, env, work))
        rows["upload"] = {"bytes": cipher_size, "jaco": up, "ref": b_up}
        expected = {
            "ciphertext_size": cipher_size,
            "ciphertext_sha256": enc["ciphertext_sha256"],
            "plaintext_sha256": enc["plaintext_sha256"],
            "meta": json.loads(
                subprocess.run(
                    [str(BIN / "jaco"), "backup", "inspect", str(archive), "--json"],
                    capture_output=True,
                    check=True,
                ).stdout
            ),
        }
        v_args = {"store": f"s3://{BUCKET}", "key": key, "expected": expected}
        ver = repeat(reps, lambda: stage("verify", v_args, env, work))
        dl = work / "download.out"
        b_down = repeat(
            reps,
            lambda: stage(
                "boto3-download", {"bucket": BUCKET, "key": ref_key, "path": str(dl)}, env, work
            ),
        )
        # verify's own reference (issue 16): the same download, then decrypt and list it
        check = repeat(reps, lambda: decrypt_and_list(ctx["key_file"], dl))
        dl.unlink(missing_ok=True)
        ver_ref = in_sequence(b_down, check)
        rows["download"] = {"bytes": cipher_size, "jaco": ver, "ref": b_down, "verify_ref": ver_ref}
        print(
            f"   upload: {up['seconds']:.2f}s vs {b_up['seconds']:.2f}s; verify "
            f"{ver['seconds']:.2f}s (download {ver['download_seconds']:.2f}s) vs "
            f"{b_down['seconds']:.2f}s (+ age -d | tar -tzf {check['seconds']:.2f}s)",
            flush=True,
        )
        cipher.unlink()

        # restore to READY
        r_ours, r_ref = alternating(
            reps,
            cold(lambda: restore_jaco(archive, work, cluster.token)),
            cold(lambda: restore_reference(ref_snap, work)),
        )
        rows["restore"] = {"bytes": snap_size, "jaco": r_ours, "ref": r_ref}
        print(f"   restore: {r_ours['seconds']:.2f}s vs {r_ref['seconds']:.2f}s", flush=True)
        ref_snap.unlink()
        archive.unlink()

        # the whole backup-cluster flow
        flow_args = {
            "params": {
                "cluster": f"bench-{size_mib}",
                "servers": [node.server],
                "bucket": BUCKET,
                "prefix": f"flow{size_mib}",
                "recipients": recipients,
                "local_dir": str(work / "local"),
                "timeout_seconds": 1800,
            }
        }
        flow = stage("flow", flow_args, env, work)
        shutil.rmtree(work / "local", ignore_errors=True)

        # drill RTO: the drill-restore flow on the backup the flow just stored
        drill_args = {
            "params": {
                "cluster": f"bench-{size_mib}",
                "bucket": BUCKET,
                "prefix": f"flow{size_mib}",  # the catalog the flow above wrote
                "key": flow["key"],
                "workdir": str(work / "drills"),
                "driver": "bwrap",
                "timeout_seconds": 1800,
            }
        }
        settled()  # cold, as restore to READY, its denominator, is (`cold`)
        rows["drill"] = stage("drill", drill_args, env, work)
        print(
            f"   drill: RTO {rows['drill']['rto_seconds']:.2f}s, flow "
            f"{rows['drill']['seconds']:.2f}s",
            flush=True,
        )
        ref_sum = sum(rows[k]["ref"]["seconds"] for k in ("snapshot", "encrypt", "upload"))
        ref_sum += rows["download"]["verify_ref"]["seconds"]
        rows["pipeline"] = {
            "bytes": snap_size,
            "jaco": flow,
            "ref": {"seconds": ref_sum + cp["seconds"], "rss_kib": 0},
        }
        print(f"   pipeline: {flow['seconds']:.2f}s vs sum {ref_sum:.2f}s", flush=True)

        # write latency: quiet, during `jaco backup`, and during `etcdctl snapshot save`
        with open_client(node.server, cluster.token) as client:
            probe = WriteProbe(client)
            quiet = probe.latencies(100)

            out, run_env = work / "during.tar.gz", {**os.environ, **env}
            jaco_cmd = [str(BIN / "jaco"), "backup", "--output", str(out)]
            busy = probe.during(jaco_cmd, run_env).latencies
            settled(out)
            ref_cmd = node.snapshot_save_command(work / "during.db")
            ref_busy = probe.during(ref_cmd, run_env).latencies
            (work / "during.db").unlink(missing_ok=True)
        rows["write_latency"] = {
            "quiet_p50_ms": pct(quiet, 0.5) * 1000,
            "quiet_p99_ms": pct(quiet, 0.99) * 1000,
            "backup_p50_ms": pct(busy, 0.5) * 1000,
            "backup_p99_ms": pct(busy, 0.99) * 1000,
            "etcdctl_p50_ms": pct(ref_busy, 0.5) * 1000,
            "etcdctl_p99_ms": pct(ref_busy, 0.99) * 1000,
            "quiet_n": len(quiet),
            "backup_n": len(busy),
            "etcdctl_n": len(ref_busy),
        }
    finally:
        cluster.stop_all()
        shutil.rmtree(root, ignore_errors=True)
    return rows


# -- reporting ---------------------------------------------------------------------------------


def _mib(kib: float) -> str:
    return f"{kib / 1024:.0f}" if kib else "-"


def _rate(nbytes: int, seconds: float) -> str:
    return f"{nbytes / MIB / seconds:.0f}" if seconds else "-"


def _dataset(value_kib: int) -> str:
    return f"random {value_kib} KiB records" if value_kib else "small JSON records"


def table(size_mib: int, r: dict[str, Any]) -> list[str]:
    snap, enc, up, down = r["snapshot"], r["encrypt"], r["upload"], r["download"]
    res, pipe = r["restore"], r["pipeline"]
    lines = [
        f"\n### {size_mib} MiB (snapshot {snap['bytes'] / MIB:.0f} MiB, archive "
        f"{enc['bytes'] / MIB:.0f} MiB, {r['built']['deployments']} deployments, "
        + (
            f"{r['built']['bulk_keys']} bulk keys of {r['built']['bulk_value_kib']} KiB)"
            if r["built"]["bulk_value_kib"]
            else f"{r['built']['bulk_keys']} small JSON records, bench.realistic)"
        ),
        "",
        "| stage | jaco s | MiB/s | RSS MiB | reference | ref s | MiB/s | RSS MiB | jaco/ref |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def row(name: str, nbytes: int, ours: dict, ref_name: str, ref: dict) -> None:
        s, rs = ours["seconds"], ref["seconds"]
        lines.append(
            f"| {name} | {s:.2f} | {_rate(nbytes, s)} | {_mib(ours['rss_kib'])} | {ref_name} | "
            f"{rs:.2f} | {_rate(nbytes, rs)} | {_mib(ref['rss_kib'])} | {s / rs:.2f} |"
        )

    row("snapshot to file", snap["bytes"], snap["jaco"], "etcdctl snapshot save", snap["ref"])
    lines.append(
        f"| (jacod server peak during backup) | | | {_mib(snap['jacod_rss_kib'])} | | | | | |"
    )
    row("encrypt", enc["bytes"], enc["jaco"], "age CLI", enc["ref"])
    row("encrypt", enc["bytes"], enc["jaco"], "cp", enc["cp"])
    row("upload", up["bytes"], up["jaco"], "boto3 upload_file", up["ref"])
    dl_only = {"seconds": down["jaco"]["download_seconds"], "rss_kib": down["jaco"]["rss_kib"]}
    # Since stop 33 verify reads the object as it downloads: its seconds waiting for S3 are
    # not a download's time (the decrypter sets the pace), only the whole task compares.
    row("waiting for S3 (in verify)", down["bytes"], dl_only, "boto3 download_file", down["ref"])
    ref_name = "download_file, age -d into tar -tzf"
    row("verify task (whole)", down["bytes"], down["jaco"], ref_name, down["verify_ref"])
    row("restore to READY", res["bytes"], res["jaco"], "etcdctl restore + etcd", res["ref"])
    lines.append(
        f"| (jaco restore CLI alone; jacod / bare etcd RSS) | "
        f"{res['jaco']['restore_seconds']:.2f} | | {_mib(res['jaco']['jacod_rss_kib'])} | | | | "
        f"{_mib(res['ref']['etcd_rss_kib'])} | |"
    )
    row("whole pipeline", pipe["bytes"], pipe["jaco"], "sum of references (+cp)", pipe["ref"])
    for st in pipe["jaco"].get("stages", []):
        lines.append(
            f"| (flow stage {st['stage']}) | {st['seconds']} | {st['MiB/s']} | | | | | | |"
        )
    drill = r["drill"]
    lines.append(
        f"| drill RTO (download into decrypt, restore, READY) | {drill['rto_seconds']:.2f} | "
        f"{_rate(enc['bytes'], drill['rto_seconds'])} | {_mib(drill['rss_kib'])} | — | | | | |"
    )
    lines.append(f"| (drill-restore flow, all checks) | {drill['seconds']:.2f} | | | | | | | |")
    wl = r["write_latency"]
    lines.append(
        f"\nwrite latency (Scale RPC): quiet p50 {wl['quiet_p50_ms']:.1f} ms p99 "
        f"{wl['quiet_p99_ms']:.1f} ms (n={wl['quiet_n']}); during `jaco backup` p50 "
        f"{wl['backup_p50_ms']:.1f} ms p99 {wl['backup_p99_ms']:.1f} ms (n={wl['backup_n']}); "
        f"during `etcdctl snapshot save` p50 {wl['etcdctl_p50_ms']:.1f} ms p99 "
        f"{wl['etcdctl_p99_ms']:.1f} ms (n={wl['etcdctl_n']})"
    )
    return lines


def targets(results: dict[int, dict[str, Any]], dataset: str = "") -> list[str]:
    lines = [f"\n### targets{f' ({dataset})' if dataset else ''} (measured, not asserted)", ""]

    def check(label: str, ok: bool, detail: str) -> None:
        lines.append(f"- [{'met' if ok else 'MISSED'}] {label}: {detail}")

    for size, r in results.items():

        def ratio(k: str, r: dict[str, Any] = r) -> float:
            return float(r[k]["jaco"]["seconds"] / r[k]["ref"]["seconds"])

        check(
            f"{size} MiB backup ≤1.25x etcdctl",
            ratio("snapshot") <= 1.25,
            f"{ratio('snapshot'):.2f}x",
        )
        check(f"{size} MiB restore ≤1.25x", ratio("restore") <= 1.25, f"{ratio('restore'):.2f}x")
        check(f"{size} MiB encrypt ≤1.5x age", ratio("encrypt") <= 1.5, f"{ratio('encrypt'):.2f}x")
        check(f"{size} MiB upload ≤1.0x boto3", ratio("upload") <= 1.0, f"{ratio('upload'):.2f}x")
        v = r["download"]["jaco"]["seconds"] / r["download"]["verify_ref"]["seconds"]
        check(
            f"{size} MiB verify (streamed download, decrypt, checks) ≤1.0x download_file, "
            "age -d into tar -tzf",
            v <= 1.0,
            f"{v:.2f}x (the whole task {ratio('download'):.2f}x the download alone)",
        )
        check(
            f"{size} MiB pipeline ≤1.2x sum", ratio("pipeline") <= 1.2, f"{ratio('pipeline'):.2f}x"
        )
        peaks = {
            k: r[k]["jaco"]["rss_kib"] / 1024
            for k in ("snapshot", "encrypt", "upload", "download", "restore", "pipeline")
        }
        peaks["drill"] = r["drill"]["rss_kib"] / 1024
        peaks["jacod(backup)"] = r["snapshot"]["jacod_rss_kib"] / 1024
        worst = max(peaks, key=lambda k: peaks[k])
        check(
            f"{size} MiB every stage <200 MiB RSS",
            peaks[worst] < 200,
            f"max {worst} {peaks[worst]:.0f} MiB",
        )
        wl = r["write_latency"]
        lat = wl["backup_p99_ms"] / wl["etcdctl_p99_ms"]
        check(
            f"{size} MiB write p99 during backup ≤1.2x its p99 during etcdctl snapshot save",
            lat <= 1.2,
            f"{lat:.2f}x ({wl['backup_p99_ms']:.1f} vs {wl['etcdctl_p99_ms']:.1f} ms; quiet "
            f"{wl['quiet_p99_ms']:.1f} ms)",
        )
        rto = r["drill"]["rto_seconds"] / r["restore"]["jaco"]["seconds"]
        check(f"{size} MiB drill RTO ≤1.3x restore to READY", rto <= 1.3, f"{rto:.2f}x")
    if len(results) > 1:
        small, large = min(results), max(results)
        for k in ("snapshot", "encrypt", "upload", "download", "restore", "pipeline"):
            a = results[small][k]["jaco"]["rss_kib"] / 1024
            b = results[large][k]["jaco"]["rss_kib"] / 1024
            check(
                f"RSS flat {small}→{large} MiB: {k}", b <= a * 1.25 + 10, f"{a:.0f} → {b:.0f} MiB"
            )
        a = results[small]["snapshot"]["jacod_rss_kib"] / 1024
        b = results[large]["snapshot"]["jacod_rss_kib"] / 1024
        check(
            f"RSS flat {small}→{large} MiB: jacod during backup",
            b <= a * 1.25 + 10,
            f"{a:.0f} → {b:.0f} MiB",
        )
    return lines


# -- main ---------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__)
    parser.add_argument("--size", type=int, action="append", choices=[64, 512, 2048])
    parser.add_argument(
        "--dataset",
        action="append",
        choices=list(DATASETS),
        help="bulk: random 48 KiB records (--value-kib); small: realistic small JSON records",
    )
    parser.add_argument(
        "--keys",
        type=int,
        action="append",
        help="key counts of the cost-growth table (bench.growth); --keys 0 skips it",
    )
    parser.add_argument("--quick", action="store_true", help="64 MiB, both data sets, 10⁴ keys")
    parser.add_argument(
        "--repeat",
        type=int,
        default=0,
        help="runs per stage (median; default 3 at 64 MiB, 1 above; the backup at least 3)",
    )
    parser.add_argument("--value-kib", type=int, default=48, help="size of each bulk record")
    parser.add_argument("--workdir", default="/var/tmp", help="where the clusters live")
    args = parser.parse_args(argv)
    from bench import growth  # it measures with this module's helpers

    sizes = args.size or ([64] if args.quick else [64, 512, 2048])
    datasets = args.dataset or list(DATASETS)
    growth_keys = [k for k in args.keys or ([10_000] if args.quick else growth.KEYS) if k]
    root = Path(tempfile.mkdtemp(prefix="jaco-bench-", dir=args.workdir))
    results: dict[str, dict[int, dict[str, Any]]] = {d: {} for d in datasets}
    growth_results: dict[int, dict[str, Any]] = {}
    started = dt.datetime.now(dt.UTC)
    stack = contextlib.ExitStack()
    try:
        ctx = stack.enter_context(services(root))
        s3 = ctx["s3"]
        startup = measure([PY, "-m", "bench.stage", "cli", str(root / "v.json"), "--", "--version"])
        for dataset in datasets:
            value_kib = args.value_kib if DATASETS[dataset] else 0
            # 2 GiB of small records is 5·10⁶ keys: the growth table covers key counts.
            for size in args.size or (sizes if value_kib else [x for x in sizes if x <= 512]):
                reps = args.repeat or (3 if size <= 64 else 1)
                results[dataset][size] = run_size(size, ctx, reps, value_kib)
                for line in table(size, results[dataset][size]):
                    print(line)
                print(flush=True)
                # the stored objects of this size are not needed any more
                client = s3.client()
                for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET):
                    for obj in page.get("Contents", []):
                        client.delete_object(Bucket=BUCKET, Key=obj["Key"])
        if growth_keys:
            growth_results = growth.run(growth_keys, root, args.repeat or 3, ctx)
    finally:
        stack.close()
        shutil.rmtree(root, ignore_errors=True)
    print(f"(jaco CLI startup, `jaco --version`: {startup['seconds']:.2f}s)")
    for dataset, by_size in results.items():
        for line in targets(by_size, _dataset(args.value_kib if DATASETS[dataset] else 0)):
            print(line)
    if growth_results:
        for line in growth.table(growth_results):
            print(line)
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"{started:%Y%m%dT%H%M%SZ}.json"
    out.write_text(
        json.dumps(
            {
                "started": started.isoformat(),
                "cli_startup_seconds": startup["seconds"],
                "sizes": {str(k): v for k, v in results.get("bulk", {}).items()},
                "small_records": {str(k): v for k, v in results.get("small", {}).items()},
                "growth": {str(k): v for k, v in growth_results.items()},
            },
            indent=2,
            default=str,
        )
    )
    print(f"\nwrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
