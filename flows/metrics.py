"""Prometheus metrics of every cluster's recoverability, read from the catalog on each scrape.

Served by the deployments process when asked (`python -m deployments.serve --metrics-port
9464`, on 127.0.0.1 unless told otherwise). Per cluster:

    jaco_backup_last_success_timestamp_seconds   newest stored backup (its snapshot time)
    jaco_backup_last_verified_timestamp_seconds  newest verified backup still stored (its
                                                 snapshot time)
    jaco_backup_last_size_bytes                  size of the newest stored backup, encrypted
    jaco_drill_last_success_timestamp_seconds    newest passing restore drill
    jaco_drill_last_rto_seconds                  that drill's measured restore time
    jaco_backup_objective_seconds / jaco_drill_objective_seconds   the configured objectives
    jaco_failures_total{kind}                    failed runs recorded in the catalog
    jaco_stream_durable_timestamp_seconds        every change the stream received before this
                                                 is stored (its heartbeat; absent: no stream)
    jaco_stream_queued_segments                  sealed segments waiting for a store
    jaco_stream_objective_seconds                max_stream_lag, where set
    jaco_catalog_up                              1 when the catalog could be read

A scrape reads each catalog at most once per CACHE_SECONDS, up to SCRAPE_THREADS clusters
at a time, through one store (S3 client) per bucket and settings, kept between scrapes
(opened again after a failed read, so that rotated S3 keys are taken up), and fetches only
the catalog records that changed since the last scrape (flows.catalog). Every catalog is read
once at the start; a scrape that comes while a cluster is being read waits for that read's
result.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from prometheus_client import CollectorRegistry, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from flows.catalog import BackupRecord, Catalog, ClusterView, newest_verified_in
from flows.errors import StorageError
from flows.storage import BackupStore, open_store
from flows.watchdog_flow import Objective

CACHE_SECONDS = 15.0
SCRAPE_THREADS = 4  # 1: 136 MiB peak for 50 clusters, 2: 140, 4: 155, 8: 166-218 (bench)
KINDS = ("backup", "drill", "prune", "watchdog")


class CatalogCollector(Collector):
    def __init__(self, targets: list[Objective]) -> None:
        self.targets = targets
        self._cache: dict[str, tuple[float, ClusterView | None, BackupRecord | None]] = {}
        self._stores: dict[str, BackupStore] = {}
        self._reading: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()

    def _view(self, target: Objective) -> tuple[ClusterView | None, BackupRecord | None]:
        """The cluster's catalog, and its newest verified backup still in the store. One read
        of a cluster at a time: a scrape that comes while one runs waits for its result."""
        with self._lock:
            reading = self._reading.setdefault(target.cluster, threading.Lock())
        with reading:
            return self._read_view(target)

    def _read_view(self, target: Objective) -> tuple[ClusterView | None, BackupRecord | None]:
        with self._lock:
            cached = self._cache.get(target.cluster)
            if cached and time.monotonic() - cached[0] < CACHE_SECONDS:
                return cached[1], cached[2]
        view: ClusterView | None = None
        newest: BackupRecord | None = None
        where = f"{target.s3_url} {target.s3.model_dump_json()}"  # secrets' sources, not values
        try:
            with self._lock:  # opened once for the clusters that share it (9 ms)
                store = self._stores.get(where)
                if store is None:
                    store = self._stores[where] = open_store(target.s3_url, target.s3)
            catalog = Catalog(store, target.prefix, target.cluster)
            view = catalog.view()
            newest = newest_verified_in(view.backups, catalog.store.exists)[0]  # HEADs
        except Exception as exc:  # noqa: BLE001 - reported as jaco_catalog_up 0
            view, newest = None, None
            if isinstance(exc, StorageError):  # the store's own failure (not one cluster's
                with self._lock:  # damaged record): opened again next time, secrets read again
                    if self._stores.get(where) is store:
                        self._stores.pop(where, None)
        with self._lock:
            self._cache[target.cluster] = (time.monotonic(), view, newest)
        return view, newest

    def collect(self) -> Iterator[Metric]:
        def gauge(name: str, doc: str) -> GaugeMetricFamily:
            return GaugeMetricFamily(name, doc, labels=["cluster"])

        up = gauge("jaco_catalog_up", "1 when the cluster's backup catalog could be read")
        success = gauge(
            "jaco_backup_last_success_timestamp_seconds", "Snapshot time of the newest backup"
        )
        verified = gauge(
            "jaco_backup_last_verified_timestamp_seconds",
            "Snapshot time of the newest verified backup",
        )
        size = gauge("jaco_backup_last_size_bytes", "Encrypted size of the newest backup")
        drilled = gauge(
            "jaco_drill_last_success_timestamp_seconds", "Time of the newest passing drill"
        )
        rto = gauge("jaco_drill_last_rto_seconds", "Restore time measured by that drill")
        backup_goal = gauge("jaco_backup_objective_seconds", "max_backup_age (RPO objective)")
        drill_goal = gauge("jaco_drill_objective_seconds", "max_drill_age")
        durable = gauge(
            "jaco_stream_durable_timestamp_seconds",
            "Every change the stream received before this time is stored",
        )
        queued = gauge("jaco_stream_queued_segments", "Sealed segments waiting for a store")
        stream_goal = gauge("jaco_stream_objective_seconds", "max_stream_lag")
        failures = CounterMetricFamily(
            "jaco_failures", "Failed runs recorded in the catalog", labels=["cluster", "kind"]
        )
        with ThreadPoolExecutor(SCRAPE_THREADS, thread_name_prefix="scrape") as pool:
            views = list(pool.map(self._view, self.targets))
        for target, (view, newest_verified) in zip(self.targets, views, strict=True):
            labels = [target.cluster]
            backup_goal.add_metric(labels, target.max_backup_age)
            drill_goal.add_metric(labels, target.max_drill_age)
            _add(stream_goal, labels, target.max_stream_lag)
            up.add_metric(labels, 0 if view is None else 1)
            if view is None:
                continue
            _add(success, labels, view.newest.taken_at.timestamp() if view.newest else None)
            _add(size, labels, view.newest.size if view.newest else None)
            _add(
                verified, labels, newest_verified.taken_at.timestamp() if newest_verified else None
            )
            passing = view.last_passing_drill()
            _add(drilled, labels, passing[1].at.timestamp() if passing else None)
            _add(rto, labels, passing[1].rto_seconds if passing else None)
            _add(durable, labels, view.stream.durable_at.timestamp() if view.stream else None)
            _add(queued, labels, view.stream.queued if view.stream else None)
            for kind in KINDS:
                failures.add_metric([target.cluster, kind], view.failure_counts.get(kind, 0))
        yield from (up, success, verified, size, drilled, rto, backup_goal, drill_goal, failures)
        yield from (durable, queued, stream_goal)


def _add(family: GaugeMetricFamily, labels: list[str], value: Any) -> None:
    if value is not None:
        family.add_metric(labels, float(value))


def serve_metrics(targets: list[Objective], port: int, address: str = "127.0.0.1") -> Any:
    """Start the HTTP endpoint in a background thread; returns the server (to shut down).

    Every catalog is read once at the start, on a thread of its own: the first scrape reads
    every record (a fleet's thousands of GETs), and a scrape that waits for that times out in
    Prometheus while the next one starts the same reads again."""
    registry = CollectorRegistry()
    collector = CatalogCollector(targets)
    registry.register(collector)
    server, _ = start_http_server(port, addr=address, registry=registry)
    threading.Thread(
        target=_collect_once, args=(collector,), name="metrics-warm", daemon=True
    ).start()
    return server


def _collect_once(collector: CatalogCollector) -> None:
    for _ in collector.collect():
        pass
