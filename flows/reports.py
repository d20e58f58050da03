"""What runs publish for operators: a report of each backup and drill, and tables rendered
from the catalog (never from earlier artifacts, so they cannot drift from the truth).

They name keys, indices, checksums, timings, checks and runs, never a secret.
"""

from __future__ import annotations

from typing import Any

from flows.catalog import Catalog, ClusterView, DrillRecord, Failure, RunRef
from flows.params import BackupParams, Where
from flows.storage import open_store
from jaco.public import BackupMeta

TABLE_ROWS = 50


def backup_report(
    params: BackupParams,
    meta: BackupMeta,
    key: str,
    encrypted: Any,
    stages: list[dict[str, Any]],
    pruned: list[dict[str, Any]],
    swept: list[str],
) -> str:
    lines = [
        f"# Backup of `{params.cluster}` (cluster `{meta.cluster_id}`)",
        "",
        f"- snapshot index **{meta.snapshot_index}**, term {meta.snapshot_term}, "
        f"leader at snapshot `{meta.leader_at_snapshot}`, taken {meta.taken_at.isoformat()}",
        f"- object `s3://{params.bucket}/{key}` and a local copy in `{params.local_dir}`",
        f"- archive {encrypted.size} bytes encrypted; plaintext SHA-256 "
        f"`{encrypted.plaintext_sha256}`",
        f"- ciphertext SHA-256 `{encrypted.ciphertext_sha256}`",
        f"- snapshot SHA-256 `{meta.snapshot_sha256}`, state digest `{meta.state_digest}`",
        f"- records: {', '.join(f'{k} {v}' for k, v in meta.counts.items())}",
    ]
    if meta.audit_head:
        lines.append(f"- audit head: event {meta.audit_head.seq}, `{meta.audit_head.hash}`")
    lines += ["", "| stage | seconds | bytes | MiB/s |", "|---|---|---|---|"]
    lines += [f"| {r['stage']} | {r['seconds']} | {r['bytes']} | {r['MiB/s']} |" for r in stages]
    for p in pruned:
        verb = "would delete" if p["dry_run"] else "deleted"
        lines.append(
            f"\nRetention on {p['store']}: {verb} {len(p['deleted'])}, kept "
            f"{len(p['kept'])}, {len(p['locked'])} under object lock."
        )
        if p.get("damaged_records"):  # its backup kept: whether it was verified is unknown
            lines += ["Damaged catalog records (their backups kept; mend or remove them):"]
            lines += ["- `" + k.replace("`", "'") + "`" for k in p["damaged_records"]]
    if swept:
        lines += ["", "Swept what dead runs left:", *(f"- {item}" for item in swept)]
    return "\n".join(lines)


def drill_report(
    cluster: str,
    driver: str,
    key: str,
    meta: BackupMeta | None,
    report: dict[str, Any],
    rto: float,
) -> str:
    timings = report.get("timings", {})
    lines = [
        f"# Restore drill of `{cluster}`: {'PASSED' if report['ok'] else 'FAILED'}",
        "",
        f"- backup `{key}`"
        + (
            f" (cluster `{meta.cluster_id}`, index {meta.snapshot_index}, taken "
            f"{meta.taken_at.isoformat()})"
            if meta
            else ""
        ),  # fmt: skip
        f"- sandbox `{report.get('sandbox', '?')}` ({driver}"
        + (f", image `{report['image']}`" if report.get("image") else "")
        + "), wiped",
        f"- **RTO {rto:.1f} s**: download and decrypt {timings.get('decrypt_seconds', 0):.2f} s "
        f"(waiting for the store {timings.get('download_seconds', 0):.2f} s), restore "
        f"{timings.get('restore_seconds', 0):.2f} s, ready {timings.get('ready_seconds', 0):.2f} s"
        + (
            f"; the sandbox's CPU {timings['cpu_seconds']:.2f} s"
            if "cpu_seconds" in timings
            else ""
        ),
        "",
        "| check | result | seconds | detail |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {c['name']} | {'pass' if c['ok'] else '**FAIL**'} | {c.get('seconds', 0):.2f} | "
        f"{c['detail']} |"
        for c in report["checks"]
    ]
    return "\n".join(lines)


def _link(run: RunRef | None) -> str:
    if run is None:
        return ""
    if run.url:  # the run's page, its id in the address
        return f"[{run.name or run.id}]({run.url})"
    return f"{run.name} ({run.id})" if run.name else run.id


def tables(view: ClusterView) -> dict[str, list[dict[str, Any]]]:
    """The catalog as the tables operators read: backups, drills (failures included)."""
    backups = [
        {
            "key": b.key,
            "index": b.snapshot_index,
            "taken_at": b.taken_at.isoformat(timespec="seconds"),
            "size": b.size,
            "verified": b.verified.at.isoformat(timespec="seconds") if b.verified else "NO",
            "last drill": _drill_cell(b.last_drill),
            "RTO s": round(b.last_drill.rto_seconds, 1)
            if b.last_drill and b.last_drill.rto_seconds
            else "",
            "run": _link(b.taken_by),
        }
        for b in view.backups[:TABLE_ROWS]
    ]
    drills: list[tuple[Any, dict[str, Any]]] = []
    seen_runs = set()
    for b in view.backups:
        for d in b.drills:
            seen_runs.add(d.run.id if d.run else None)
            drills.append((d.at, _drill_row(d, b.key, b.snapshot_index)))
    for f in view.failures:
        if f.kind == "drill" and (f.run.id if f.run else None) not in seen_runs:
            drills.append((f.at, _failure_row(f)))
    failures = [
        {
            "at": f.at.isoformat(timespec="seconds"),
            "kind": f.kind,
            "reason": f.reason[:300],
            "run": _link(f.run),
        }
        for f in view.failures[:TABLE_ROWS]
    ]
    return {
        "backups": backups,
        "drills": [row for _, row in sorted(drills, key=lambda p: p[0], reverse=True)][:TABLE_ROWS],
        "failures": failures,
    }


def _drill_cell(drill: DrillRecord | None) -> str:
    if drill is None:
        return "never"
    return f"{'passed' if drill.passed else 'FAILED'} {drill.at.isoformat(timespec='seconds')}"


def _drill_row(d: DrillRecord, key: str, index: int) -> dict[str, Any]:
    return {
        "at": d.at.isoformat(timespec="seconds"),
        "key": key,
        "index": index,
        "result": "passed" if d.passed else "FAILED",
        "RTO s": round(d.rto_seconds, 1) if d.rto_seconds else "",
        "failed": ", ".join(d.failed_checks) or d.reason[:200],
        "run": _link(d.run),
    }


def _failure_row(f: Failure) -> dict[str, Any]:
    return {
        "at": f.at.isoformat(timespec="seconds"),
        "key": f.key or "",
        "index": "",
        "result": "FAILED",
        "RTO s": "",
        "failed": f.reason[:200],
        "run": _link(f.run),
    }


def publish_history(where: Where) -> None:
    """Publish the cluster's catalog as Prefect table artifacts. Best effort: the catalog
    itself is the record; a store that cannot be read now is said in the log."""
    from prefect.artifacts import create_table_artifact
    from prefect.logging import get_run_logger

    try:
        view = Catalog(open_store(where.s3_url, where.s3), where.prefix, where.cluster).view()
    except Exception as exc:  # noqa: BLE001
        get_run_logger().error("the history tables of %s were not updated: %s", where.cluster, exc)
        return
    rendered = tables(view)
    for name, description in (
        ("backups", "backups of {c}: verified, drilled, RTO (from the catalog)"),
        ("drills", "restore drills of {c}, failures included (from the catalog)"),
        ("failures", "failed runs of {c} (from the catalog)"),
    ):
        create_table_artifact(
            rendered[name] or [{"": "none"}],
            key=f"jaco-{name}-{view.cluster}",
            description=description.format(c=view.cluster),
        )
