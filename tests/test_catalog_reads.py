"""What a metrics scrape and the change stream's look at the catalog cost in S3 requests.

The metrics endpoint reads every cluster's catalog on each scrape (every 15 s by default) and
the change stream reads its cluster's backup records every minute. Each read fetched every
record again, one listing per part of the catalog: 50 clusters of 30 backups and their drills
took 5500 requests a scrape (bench/catalog_scrape.py), 15.6 s even on loopback, longer than
Prometheus waits. A view is now read from one listing of the catalog, and a record is fetched
once, and again only when that listing shows it changed (its ETag, or a file's inode, mtime
and size). Counted here on the real client against SeaweedFS: every S3 call the process makes
goes through botocore's event hooks.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import threading
import urllib.request
from collections import Counter, OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import flows.storage
from flows import catalog as catalog_module
from flows.catalog import Catalog
from flows.metrics import CatalogCollector, serve_metrics
from flows.records import DrillRecord, Failure, SegmentRecord, Verified
from flows.secrets import S3Settings
from flows.storage import open_store
from flows.watchdog_flow import Objective, WatchdogParams, watchdog
from infra.localcluster import wait_for
from infra.seaweed import SeaweedS3, running_seaweed
from tests.unit.test_describe import IDS, _record

BUCKET = "catalog-reads"
CLUSTERS = ("alpha", "beta")
BACKUPS = 5
NOW = dt.datetime.now(dt.UTC).replace(microsecond=0)
# a catalog's records as _fill writes them: each backup and its two drills, one failure, the
# newest segment of its one chain, identity.json (no stream.json)
RECORDS = BACKUPS * 3 + 1 + 1 + 1


@pytest.fixture(scope="module")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SeaweedS3]:
    with running_seaweed(tmp_path_factory.mktemp("seaweed")) as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture
def calls(s3: SeaweedS3, monkeypatch: pytest.MonkeyPatch) -> Counter[str]:
    """Every S3 operation made by a store opened from now on, by name (GetObject, ...); the
    stores reach SeaweedFS through the environment, as the pipeline's do."""
    for name, value in s3.env().items():
        monkeypatch.setenv(name, value)
    made: Counter[str] = Counter()
    real = flows.storage._s3_client

    def counted(*args: Any) -> Any:
        client = real(*args)
        client.meta.events.register("before-call.s3", lambda model, **_: made.update([model.name]))
        return client

    monkeypatch.setattr(flows.storage, "_s3_client", counted)
    monkeypatch.setattr(catalog_module, "_SEEN", OrderedDict(), raising=False)  # a new process
    return made


def _fill(prefix: str, bucket: str = BUCKET, hours: int = 0) -> None:
    """Each cluster's catalog: its newest backup `hours` before NOW."""
    store = open_store(f"s3://{bucket}")
    for cluster in CLUSTERS:
        catalog = Catalog(store, prefix, cluster)
        catalog.pin(IDS[cluster], None)
        for n in range(BACKUPS):
            at = NOW - dt.timedelta(hours=hours + n)
            record = _record(cluster, f"cluster-2026-12-04-{40 + n}.tar.gz.age").model_copy(
                update={"taken_at": at, "snapshot_index": 40 + n, "verified": Verified(at=at)}
            )
            catalog.record_backup(record)
            store.put_bytes(record.key, b"x")
            for minutes in (5, 10):
                drill = DrillRecord(
                    at=at + dt.timedelta(minutes=minutes), passed=True, rto_seconds=2
                )
                catalog.record_drill(record.key, drill)
        catalog.record_failure(Failure(at=NOW, kind="drill", reason="a failed drill"))
        newest = catalog.records()[0]
        for first in (45, 50):
            catalog.record_segment(_segment(newest.stem, first))


def _segment(base: str, first: int) -> SegmentRecord:
    at = (NOW + dt.timedelta(seconds=first)).isoformat()
    return SegmentRecord(
        key=f"segments/{base}/{first}", base=base, base_revision=40, first_revision=first,
        last_revision=first + 4, first_at=at, last_at=at, revisions=5, changes=5, size=1,
        ciphertext_sha256="4" * 64, written_at=NOW,
    )  # fmt: skip


def _targets(prefix: str) -> list[Objective]:
    return [Objective(cluster=c, bucket=BUCKET, prefix=prefix) for c in CLUSTERS]


def _scrape(collector: CatalogCollector) -> dict[tuple[str, str], float]:
    collector._cache.clear()  # as a scrape after CACHE_SECONDS
    return {
        (sample.name, sample.labels.get("cluster", "")): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def test_a_second_scrape_fetches_no_record_again_and_sees_every_change(
    s3: SeaweedS3, calls: Counter[str]
) -> None:
    _fill("scrape")
    catalog_module._SEEN.clear()  # the metrics endpoint is another process
    calls.clear()
    collector = CatalogCollector(_targets("scrape"))
    first = _scrape(collector)
    assert all(first[("jaco_catalog_up", c)] == 1 for c in CLUSTERS), first
    assert calls["GetObject"] == len(CLUSTERS) * RECORDS, calls  # stream.json: not listed
    calls.clear()

    assert _scrape(collector) == first
    # nothing fetched again: one listing of each catalog, one HEAD of its newest verified backup
    assert calls == {"ListObjectsV2": len(CLUSTERS), "HeadObject": len(CLUSTERS)}, calls

    # A change made elsewhere (another process's drill of alpha's newest backup, failed) is
    # read, and read alone: its listing shows a key this process has not fetched.
    store = open_store(f"s3://{BUCKET}")
    alpha = Catalog(store, "scrape", "alpha")
    newest = alpha.records()[0]
    later = NOW + dt.timedelta(minutes=30)
    alpha.record_drill(newest.key, DrillRecord(at=later, passed=False, reason="broken"))
    calls.clear()
    third = _scrape(collector)
    assert calls["GetObject"] == 1, calls
    assert [d.passed for d in alpha.view().backups[0].drills][-1] is False  # the new one, read
    # The newest segment changes as the stream stores the next one: read again, the window
    # reaches it.
    alpha.record_segment(_segment(newest.stem, 55))
    calls.clear()
    assert alpha.view().window.last_revision == 59  # type: ignore[union-attr]
    _scrape(collector)
    assert calls["GetObject"] == 1, calls  # the view above read the new segment
    assert (
        third[("jaco_drill_last_success_timestamp_seconds", "alpha")]
        == first[("jaco_drill_last_success_timestamp_seconds", "alpha")]
    )
    assert (
        third[("jaco_drill_last_success_timestamp_seconds", "beta")]
        == first[("jaco_drill_last_success_timestamp_seconds", "beta")]
    )


def test_a_record_rewritten_or_removed_is_never_served_from_memory(
    s3: SeaweedS3, calls: Counter[str], tmp_path: Path
) -> None:
    _fill("rewrite")
    for url in (f"s3://{BUCKET}", f"file://{tmp_path}"):
        store = open_store(url)
        catalog = Catalog(store, "rewrite", "beta")
        if url.startswith("file"):
            for n in range(2):
                at = NOW - dt.timedelta(hours=n)
                catalog.record_backup(
                    _record("beta", f"cluster-2026-12-04-{40 + n}.tar.gz.age").model_copy(
                        update={"taken_at": at, "snapshot_index": 40 + n}
                    )
                )
        before = catalog.records()
        newest = before[0]
        # Rewritten with the same size (the flag's value changes, not its length): a new
        # ETag on S3, a new inode on a directory (records are replaced, never edited).
        changed = newest.model_copy(update={"snapshot_term": 9 - newest.snapshot_term % 9})
        catalog.record_backup(changed)
        again = Catalog(open_store(url), "rewrite", "beta")
        assert again.records()[0].snapshot_term == changed.snapshot_term, url
        again.forget([before[-1].key])
        assert [r.key for r in again.records()] == [r.key for r in before[:-1]], url
        # and is not held in memory either: what is held is what the last listing showed
        seen = catalog_module._SEEN.items()
        held = {key for (where, _), keys in seen if where == again.store.location for key in keys}
        assert again.record_key(before[-1].key) not in held, url
        if url.startswith("file"):  # untagged: read every time, so nothing kept
            assert held == set(), held
        # A catalog that has read a view reads the store again afterwards, not that listing.
        again.view()
        catalog.record_backup(before[-1])
        assert len(again.records()) == len(before), url
        again.forget([before[-1].key])
        # What a caller does to a record it was given does not reach the next reader.
        given = again.records()[0]
        given.drills.append(DrillRecord(at=NOW, passed=False))
        assert again.records()[0].drills == [], url


def test_a_scrape_after_the_s3_key_is_rotated_uses_the_new_key(
    s3: SeaweedS3, calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The endpoint keeps each cluster's store (its S3 client) between scrapes; one whose read
    failed is opened again, so a key rotated in its secret's source is taken up without a
    restart."""
    _fill("rotated")
    monkeypatch.setenv("ROTATED_ID", s3.access_key)
    monkeypatch.setenv("ROTATED_KEY", "not-the-key")
    settings = S3Settings(access_key_id="env:ROTATED_ID", secret_access_key="env:ROTATED_KEY")
    target = Objective(cluster="alpha", bucket=BUCKET, prefix="rotated", s3=settings)
    collector = CatalogCollector([target])
    assert _scrape(collector)[("jaco_catalog_up", "alpha")] == 0
    monkeypatch.setenv("ROTATED_KEY", s3.secret_key)
    scraped = _scrape(collector)
    assert scraped[("jaco_catalog_up", "alpha")] == 1, scraped
    assert scraped[("jaco_backup_last_verified_timestamp_seconds", "alpha")] == NOW.timestamp()


@contextlib.contextmanager
def _serving(prefix: str, calls: Counter[str]) -> Iterator[str]:
    """The metrics endpoint over freshly filled catalogs, in a process that has read none
    (`calls` counting from its start): its URL."""
    _fill(prefix)
    catalog_module._SEEN.clear()
    calls.clear()
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    server = serve_metrics(_targets(prefix), port)
    try:
        yield f"http://127.0.0.1:{port}/metrics"
    finally:
        server.shutdown()


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=60) as reply:  # noqa: S310 - the local endpoint
        return str(reply.read().decode())


def test_the_endpoint_reads_every_catalog_before_its_first_scrape(calls: Counter[str]) -> None:
    """The first scrape after a start would read every record (thousands of GETs for a
    fleet) and outlast Prometheus' timeout: the endpoint reads them as it starts."""
    with _serving("warm", calls) as url:
        wait_for(lambda: calls["GetObject"] == len(CLUSTERS) * RECORDS, 60, "the reads")
        text = _get(url)
        assert 'jaco_catalog_up{cluster="alpha"} 1.0' in text, text
        assert calls["GetObject"] == len(CLUSTERS) * RECORDS, calls  # no record fetched again


def test_a_scrape_during_the_first_reads_waits_for_them(calls: Counter[str]) -> None:
    """A scrape that comes while the endpoint's first reads run (or while another scrape's
    do: two Prometheus servers) takes their result instead of reading every record again."""
    with _serving("during", calls) as url:
        text = _get(url)
        assert 'jaco_catalog_up{cluster="beta"} 1.0' in text, text
        assert calls["GetObject"] == len(CLUSTERS) * RECORDS, calls  # each record once


def test_the_records_kept_are_bounded_by_prefix_the_least_recently_read_dropped(
    calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill("bounded")
    catalog_module._SEEN.clear()
    monkeypatch.setattr(catalog_module, "READ_PREFIXES", 6)  # one view's worth
    store = open_store(f"s3://{BUCKET}")
    alpha, beta = (Catalog(store, "bounded", c) for c in CLUSTERS)
    alpha.view()
    calls.clear()
    alpha.view()
    assert calls["GetObject"] == 0, calls
    beta.view()
    parts = ("backups/", "drills/", "failures/", "segments/", "identity.json", "stream.json")
    assert {where for (_, where) in catalog_module._SEEN} == {
        f"bounded/catalog/beta/{part}" for part in parts
    }
    calls.clear()
    alpha.view()  # dropped: read again
    assert calls["GetObject"] == RECORDS, calls


def _side_by_side(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each cluster's view listing (PREFIX/catalog/NAME/) waits until every other cluster's
    has begun: read one after the other, the first waits in vain (20 s) and fails."""
    together = threading.Barrier(len(CLUSTERS), timeout=20)
    counted = flows.storage._s3_client

    def gated(*args: Any) -> Any:
        client = counted(*args)

        def wait(params: dict[str, Any], **_: Any) -> None:
            if params.get("Prefix", "").count("/") == 3:
                together.wait()

        client.meta.events.register("before-parameter-build.s3.ListObjectsV2", wait)
        return client

    monkeypatch.setattr(flows.storage, "_s3_client", gated)


def test_the_watchdog_reads_the_clusters_catalogs_side_by_side(
    calls: Counter[str], prefect: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The watchdog read one catalog after the other: a fleet's (a GET per record, on real
    S3) could outlast its run's 15-minute timeout."""
    _fill("watched")
    _side_by_side(monkeypatch)
    findings = watchdog(WatchdogParams(clusters=_targets("watched")))
    assert findings == {}, findings


def test_a_scrape_reads_the_clusters_catalogs_side_by_side(
    calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    _fill("scraped")
    _side_by_side(monkeypatch)
    scraped = _scrape(CatalogCollector(_targets("scraped")))
    assert [scraped[("jaco_catalog_up", c)] for c in CLUSTERS] == [1, 1], scraped


def test_clusters_in_two_buckets_are_each_read_from_their_own(
    s3: SeaweedS3, calls: Counter[str]
) -> None:
    """Stores are kept per bucket and settings, shared by the clusters that have the same."""
    other = f"{BUCKET}-2"
    s3.create_bucket(other)
    _fill("buckets")
    _fill("buckets", other, hours=7)
    alpha, beta = _targets("buckets")
    beta = beta.model_copy(update={"bucket": other})
    scraped = _scrape(CatalogCollector([alpha, beta]))
    newest = {c: scraped[("jaco_backup_last_success_timestamp_seconds", c)] for c in CLUSTERS}
    assert newest == {"alpha": NOW.timestamp(), "beta": NOW.timestamp() - 7 * 3600}, newest


def test_one_cluster_s_damaged_record_does_not_remake_the_store_it_shares(
    calls: Counter[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A damaged record is that cluster's failure, not its store's: the S3 client the other
    clusters share is kept (remade, it would resolve its credentials again every scrape)."""
    _fill("shared")
    store = open_store(f"s3://{BUCKET}")
    damaged = Catalog(store, "shared", "alpha")
    store.put_bytes(damaged.record_key(damaged.records()[0].key), b"{damaged")
    made: list[object] = []
    counted = flows.storage._s3_client

    def remembered(*args: Any) -> Any:
        made.append(client := counted(*args))
        return client

    monkeypatch.setattr(flows.storage, "_s3_client", remembered)
    collector = CatalogCollector(_targets("shared"))
    for _ in range(3):
        scraped = _scrape(collector)
        assert [scraped[("jaco_catalog_up", c)] for c in CLUSTERS] == [0, 1], scraped
    assert len(made) == 1


def test_failures_are_the_newest_first_in_a_view_and_alone(calls: Counter[str]) -> None:
    """failures() reads only the newest `limit` of the listed failures (a year of them is
    kept): newest first, whether out of a view's listing or its own."""
    store = open_store(f"s3://{BUCKET}")
    catalog = Catalog(store, "failures", "alpha")
    for minutes in (30, 10, 20):
        at = NOW - dt.timedelta(minutes=minutes)
        catalog.record_failure(Failure(at=at, kind="backup", reason=f"{minutes} min ago"))
    assert [f.reason for f in catalog.failures(limit=2)] == ["10 min ago", "20 min ago"]
    view = catalog.view()
    assert [f.reason for f in view.failures] == ["10 min ago", "20 min ago", "30 min ago"]
    assert view.failure_counts == {"backup": 3}
