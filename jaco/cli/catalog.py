"""`jaco backup ls` and `jaco backup describe`: what the pipeline's catalog knows.

For each cluster of the site configuration (or one store given with --store), its pinned id,
its backups (index, snapshot time, size, verified, last drill and RTO) and its recent
failures, read from the catalog kept next to the backups — the references are velero's
`backup get`, pgBackRest's `info` and `k3s etcd-snapshot ls`. The pipeline's modules are
imported when a command runs (the rest of the CLI starts without them).
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from jaco.cli.common import AsJson, operator_errors, out, print_json, print_table, safe, table
from jaco.errors import InvalidArgument, NotFound

if TYPE_CHECKING:
    from flows.catalog import ClusterView

ConfigOpt = Annotated[
    Path | None,
    typer.Option(
        "--config",
        help="The site configuration (default $JACO_CLUSTERS_FILE or /etc/jaco/clusters.toml).",
    ),
]
StoreOpt = Annotated[
    str | None,
    typer.Option(
        "--store",
        help="Read this store instead: s3://BUCKET (the AWS chain's credentials) or a local "
        "directory (the pipeline's local copies).",
    ),
]
PrefixOpt = Annotated[str, typer.Option(help="Key prefix, with --store.")]


def catalog_views(
    config: Path | None, store: str | None, prefix: str, only: list[str]
) -> list[Any]:
    """Each cluster's ClusterView, read from its catalog."""
    return [catalog.view() for catalog in _catalogs(config, store, prefix, only)]


def _catalogs(config: Path | None, store: str | None, prefix: str, only: list[str]) -> list[Any]:
    from flows.catalog import Catalog, clusters_in
    from flows.config import load_config, site_config_path
    from flows.errors import PipelineError
    from flows.storage import open_store

    try:
        if store:
            opened = open_store(store if "://" in store else f"file://{Path(store).absolute()}")
            names = only or clusters_in(opened, prefix)
            return [Catalog(opened, prefix, n) for n in names]
        path = config or site_config_path()
        site = load_config(path)
        unknown = sorted(set(only) - set(site.clusters))
        if unknown:
            raise InvalidArgument(
                f"no cluster named {', '.join(unknown)} in {path} (it has "
                f"{', '.join(sorted(site.clusters)) or 'none'})"
            )
        return [
            Catalog(open_store(c.s3_url, c.s3), c.prefix, name)
            for name, c in site.clusters.items()
            if not only or name in only
        ]
    except PipelineError as exc:
        raise InvalidArgument(exc.message.splitlines()[0]) from None


def _stored_view(catalog: Any) -> tuple[ClusterView, set[str]]:
    """A cluster's view, and the keys of its backups whose objects are in the store (one
    listing of the backups folder of each cluster id its records name): a record outlives an
    object deleted by hand or by a lifecycle rule. The restorable window then rests only on
    verified backups still stored."""
    from flows.records import backups_root

    view = catalog.view()
    folders = {backups_root(catalog.prefix, b.cluster_id) for b in view.backups}
    keys = {b.key for b in view.backups}
    stored = {o.key for f in sorted(folders) for o in catalog.store.list(f) if o.key in keys}
    if any(b.verified and b.key not in stored for b in view.backups):
        bases = [b for b in view.backups if b.verified and b.key in stored]
        view = view.model_copy(update={"window": catalog.window(bases)})
    return view, stored


def _ago(at: dt.datetime | None) -> str:
    if at is None:
        return "never"
    seconds = (dt.datetime.now(dt.UTC) - at).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.1f}{unit} ago"
    return f"{seconds:.0f}s ago"


def _json(view: ClusterView, stored: set[str] | None = None) -> dict[str, Any]:
    return {
        "cluster": view.cluster,
        "cluster_id": view.identity.cluster_id if view.identity else None,
        "backups": [
            {
                **b.model_dump(mode="json"),
                "drills": [d.model_dump(mode="json") for d in b.drills],
                **({"stored": b.key in stored} if stored is not None else {}),
            }
            for b in view.backups
        ],
        "failures": [f.model_dump(mode="json") for f in view.failures],
        "failure_counts": view.failure_counts,
        "window": view.window.model_dump(mode="json") if view.window else None,
        "stream": view.stream.model_dump(mode="json") if view.stream else None,
    }


@operator_errors
def backup_ls(
    cluster: Annotated[
        list[str] | None, typer.Option("--cluster", "-c", help="Only this cluster (repeatable).")
    ] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    prefix: PrefixOpt = "jaco",
    as_json: AsJson = False,
) -> None:
    """List the backups the pipeline keeps, per cluster, from its catalog: verified or not,
    whether the object is still stored, last restore drill and its RTO, recent failures."""
    from flows.catalog import newest_verified_in

    views = [_stored_view(c) for c in _catalogs(config, store, prefix, cluster or [])]
    if as_json:
        print_json([_json(v, stored) for v, stored in views])
        return
    for view, stored in views:
        pinned = view.identity.cluster_id if view.identity else "not pinned yet"
        good = newest_verified_in(view.backups, stored.__contains__)[0]
        gone = [b for b in view.backups if b.verified and b.key not in stored]
        drilled = view.last_passing_drill()
        out.print(
            f"[bold]{safe(view.cluster)}[/bold] (cluster {safe(pinned)}): newest verified "
            f"backup {_ago(good.taken_at if good else None)}, last passing drill "
            f"{_ago(drilled[1].at if drilled else None)}, "
            f"{sum(view.failure_counts.values())} failed runs recorded"
        )
        from rich.table import Table

        listing = Table(show_edge=False)
        for col in ("KEY", "INDEX", "TAKEN", "SIZE", "VERIFIED", "STORED", "LAST DRILL", "RTO"):
            listing.add_column(col)
        for b in view.backups:
            drill = b.last_drill
            listing.add_row(
                safe(b.key.rsplit("/", 1)[-1]),
                str(b.snapshot_index),
                b.taken_at.isoformat(timespec="seconds"),
                str(b.size),
                "yes" if b.verified else "NO",
                "yes" if b.key in stored else "GONE",
                ("passed " if drill.passed else "FAILED ") + _ago(drill.at) if drill else "-",
                f"{drill.rto_seconds:.1f}s" if drill and drill.rto_seconds else "-",
            )
        print_table(listing)
        for record in gone:
            out.print(
                f"  verified backup {safe(record.key)} is gone from the store (deleted by hand, by "
                "a lifecycle rule, or by a prune that stopped early); its record remains and "
                "nothing counts it",
                soft_wrap=True,
            )
        if view.window is not None:
            w = view.window
            out.print(
                f"  point-in-time restore: any point from {w.since.isoformat(timespec='seconds')}"
                f" to {w.until.isoformat(timespec='seconds')} (revision {w.last_revision}, "
                f"segments of {safe(w.base)})",
                soft_wrap=True,
            )
        if view.stream is not None:
            s = view.stream
            queued = f", {s.queued} segments queued" if s.queued else ""
            out.print(
                f"  change stream: every change received before {_ago(s.durable_at)} stored "
                f"(segments through revision {s.stored_revision}, cluster at {s.seen_revision}; "
                f"heard from {safe(s.host)} pid {s.pid} {_ago(s.at)}{queued})",
                soft_wrap=True,
            )
        for failure in view.failures[:5]:
            out.print(
                f"  failed {failure.kind} {_ago(failure.at)}: {safe(failure.reason[:200])}",
                soft_wrap=True,
            )


@operator_errors
def backup_describe(
    key: Annotated[str, typer.Argument(help="A backup's key or file name (see `ls`).")],
    cluster: Annotated[
        str | None,
        typer.Option(
            "--cluster", "-c", help="The cluster whose backup it is (when two share a file name)."
        ),
    ] = None,
    config: ConfigOpt = None,
    store: StoreOpt = None,
    prefix: PrefixOpt = "jaco",
    as_json: AsJson = False,
) -> None:
    """Everything the catalog knows about one backup: checksums, audit head, who took and
    verified it, every drill of it."""
    views = catalog_views(config, store, prefix, [cluster] if cluster else [])
    view, backup = _one_backup(views, key)
    if as_json:
        print_json(_json(view.model_copy(update={"backups": [backup]}))["backups"][0])
        return
    fields = backup.model_dump(mode="json", exclude={"drills"}).items()
    print_table(table((), fields, title=backup.key))
    for drill in backup.drills:
        result = "passed" if drill.passed else "FAILED"
        rto = f", RTO {drill.rto_seconds:.1f}s" if drill.rto_seconds else ""
        if drill.point_revision is not None:
            rto += f", point in time: revision {drill.point_revision}"
        why = f": {drill.reason}" if drill.reason else ""
        out.print(f"drill {drill.at.isoformat(timespec='seconds')} {result}{rto}"
                  f" ({safe(drill.driver)}){safe(why)}", soft_wrap=True)  # fmt: skip


def _one_backup(views: list[Any], key: str) -> tuple[Any, Any]:
    """The backup a key names: its full key exactly, or a file name no two clusters share (two
    clusters' backups taken the same day at the same revision have the same name)."""
    exact = [(v, b) for v in views for b in v.backups if b.key == key]
    if exact:
        return exact[0]
    if "/" in key:  # a full key names one backup: never another one that has its file name
        shown = f" of cluster {views[0].cluster}" if len(views) == 1 else ""
        raise NotFound(f"no backup {key} in the catalog{shown}")
    named = [(v, b) for v in views for b in v.backups if b.key.rsplit("/", 1)[-1] == key]
    clusters = sorted({v.cluster for v, _ in named})
    if len(clusters) > 1:
        raise InvalidArgument(
            f"{key} names backups of {len(clusters)} clusters ({', '.join(clusters)}): "
            "say which with --cluster, or give the full key (`jaco backup ls --json` shows it)"
        )
    if not named:
        raise NotFound(f"no backup {key} in the catalog")
    return named[0]
