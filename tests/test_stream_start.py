"""`jaco pipeline stream` whose full backup fails: it waits and tries again, longer each time,
instead of exiting (under systemd's Restart=always, an exit meant a failed backup run and its
alert every few seconds); and a run that failed after storing a verified backup is a base,
not a reason to take another. A real cluster, SeaweedFS, Prefect server, and the stream as a
real process."""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from flows.catalog import Catalog
from flows.storage import open_store
from infra.localcluster import JACO, Cluster, wait_for
from infra.seaweed import SeaweedS3, running_seaweed
from tests.pipeline import BUCKET, Webhook, age_keygen


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with running_seaweed(tmp_path_factory.mktemp("s3")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def site(
    cluster3: Cluster, prefect: str, s3: SeaweedS3, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> dict[str, object]:
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    return {"cluster": cluster3, "prefect": prefect, "s3": s3, "root": tmp_path}


def _configure(root: Path, cluster: Cluster, name: str, token: Path, extra: str = "") -> Path:
    """The site configuration of one cluster `name`, its token read from the file `token`;
    its objects under a prefix of its own, `jaco-NAME/` (the tests share a bucket, and their
    clusters are one cluster, whose backups would otherwise share a folder)."""
    recipient = age_keygen(root / "ops.key")
    servers = ", ".join(f'"{n.server}"' for n in cluster.nodes.values())
    config = root / "clusters.toml"
    config.write_text(
        f"""[clusters.{name}]
servers = [{servers}]
bucket = "{BUCKET}"
prefix = "jaco-{name}"
recipients = ["{recipient}"]
local_dir = "{root / "local"}"
{extra}
[clusters.{name}.secrets]
token = "file:{token}"
verify_identity = "file:{root / "ops.key"}"
alert_webhook = "env:STREAM_HOOK"
"""
    )
    return config


def _stream(config: Path, name: str, prefect: str, hook: Webhook, log: Path) -> subprocess.Popen:
    with open(log, "wb") as out:
        return subprocess.Popen(
            [JACO, "pipeline", "stream", "--config", str(config), "--cluster", name]
            + ["--heartbeat-seconds", "1", "--full-backup-retry-seconds", "1"],
            stdout=out,
            stderr=out,
            stdin=subprocess.DEVNULL,
            env={**os.environ, "PREFECT_API_URL": prefect, "STREAM_HOOK": hook.url},
        )


def _waits(process: subprocess.Popen, log: Path, waits: re.Pattern[str], first: list[str]) -> str:
    """Once the log names as many waits as `first`: they are `first`, in seconds, and the
    process is still up (not ended by the failures). The log's text."""
    wait_for(
        lambda: len(waits.findall(log.read_text())) >= len(first) or process.poll() is not None,
        300,
        f"{len(first)} failed attempts",
    )
    text = log.read_text()
    assert process.poll() is None, text[-3000:]
    assert waits.findall(text)[: len(first)] == first, text[-3000:]
    return text


def _stop(process: subprocess.Popen) -> int:
    process.send_signal(signal.SIGTERM)
    return process.wait(60)


def test_a_failing_full_backup_is_retried_with_backoff_not_by_exiting(
    site: dict[str, object],
) -> None:
    """A stream on a cluster with no backup yet, given a token the cluster refuses: each
    attempt fails once, alerts once, and the wait before the next one doubles (1 s, 2 s, 4 s).
    The process stays up. Once the token file is mended, the next attempt takes the base
    backup and the stream reports from it; SIGTERM then ends it with status 0. No attempt
    leaves an object behind, and the token is in no log or alert."""
    cluster, root, s3 = site["cluster"], site["root"], site["s3"]
    assert isinstance(cluster, Cluster) and isinstance(root, Path) and isinstance(s3, SeaweedS3)
    token = root / "token"
    forged = cluster.token[: cluster.token.rindex(".") + 1] + "C" * 43
    token.write_text(forged)
    config = _configure(root, cluster, "lonely", token)
    waits = re.compile(r"the full backup of lonely failed: .*; the next attempt in (\d+)s")
    catalog = Catalog(open_store(f"s3://{BUCKET}"), "jaco-lonely", "lonely")
    hook, log = Webhook(), root / "stream.log"
    process = _stream(config, "lonely", str(site["prefect"]), hook, log)
    try:
        text = _waits(process, log, waits, ["1", "2", "4"])
        assert "not valid for this cluster" in text, text[-3000:]
        failed = len(waits.findall(text))
        alerts = hook.events("lonely")
        assert set(alerts) == {"jaco.backup.failed"}, alerts
        assert failed <= len(alerts) <= failed + 1, (failed, alerts)  # +1: one under way
        listing = s3.client().list_objects_v2(Bucket=BUCKET, Prefix="jaco-lonely/")
        keys = [o["Key"] for o in listing.get("Contents", [])]
        assert keys and not [k for k in keys if not k.startswith("jaco-lonely/catalog/")], keys

        token.write_text(cluster.token)  # mended: the next attempt takes the base
        wait_for(lambda: catalog.stream_status() is not None, 180, "the stream's heartbeat")
        [base] = catalog.backups()
        assert base.verified is not None
        status = catalog.stream_status()
        assert status is not None and status.base == base.stem
        assert status.pid == process.pid
    finally:
        code = _stop(process)
        hook.close()
    text = log.read_text()
    assert code == 0, text[-3000:]
    assert forged.split(".")[-1] not in text + str(hook.posts)
    assert cluster.token.split(".")[-1] not in text + str(hook.posts)


def test_a_run_that_failed_after_storing_a_verified_backup_is_the_base(
    site: dict[str, object],
) -> None:
    """The full backup's run is stored and verified, then fails (here: its drill, due after
    every backup, cannot start with the `inline` driver outside a drill container). That run
    failed, but its backup is a base: the stream chains onto it at once, without taking
    another backup a second later, and another after that."""
    cluster, root = site["cluster"], site["root"]
    assert isinstance(cluster, Cluster) and isinstance(root, Path)
    token = root / "token"
    token.write_text(cluster.token)
    config = _configure(root, cluster, "drilled", token, 'drill_every = 1\ndrill_driver = "inline"')
    catalog = Catalog(open_store(f"s3://{BUCKET}"), "jaco-drilled", "drilled")
    hook, log = Webhook(), root / "stream.log"
    process = _stream(config, "drilled", str(site["prefect"]), hook, log)
    try:
        wait_for(
            lambda: catalog.stream_status() is not None or len(catalog.backups()) > 1,
            180,
            "the stream's heartbeat, or a second backup",
        )
        text = log.read_text()
        [base] = catalog.backups()
        assert base.verified is not None, text[-3000:]
        status = catalog.stream_status()
        assert status is not None and status.base == base.stem, text[-3000:]
        assert "the inline drill driver runs only inside an ephemeral drill container" in text
        assert f"a verified backup {base.key} is stored: streaming from it" in text, text[-3000:]
        assert "the next attempt in" not in text
        assert hook.events("drilled").count("jaco.backup.failed") == 1, hook.posts
    finally:
        code = _stop(process)
        hook.close()
    assert code == 0, log.read_text()[-3000:]


def test_prefect_out_of_reach_is_waited_for_like_a_failed_run(site: dict[str, object]) -> None:
    """No Prefect API answers (its server down, a wrong PREFECT_API_URL): the backup run
    cannot even start. That is retried with the same growing wait, not an exit."""
    cluster, root = site["cluster"], site["root"]
    assert isinstance(cluster, Cluster) and isinstance(root, Path)
    token = root / "token"
    token.write_text(cluster.token)
    config = _configure(root, cluster, "unserved", token)
    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        nowhere = f"http://127.0.0.1:{closed.getsockname()[1]}/api"
    hook, log = Webhook(), root / "stream.log"
    process = _stream(config, "unserved", nowhere, hook, log)
    waits = re.compile(r"the next attempt in (\d+)s")
    try:
        text = _waits(process, log, waits, ["1", "2"])
        assert f"RuntimeError: Failed to reach API at {nowhere}" in text, text[-3000:]
    finally:
        code = _stop(process)
        hook.close()
    assert code == 0, log.read_text()[-3000:]
    assert Catalog(open_store(f"s3://{BUCKET}"), "jaco-unserved", "unserved").backups() == []
