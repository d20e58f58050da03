"""What runs publish for operators: markdown reports of a backup and of a drill.

They name keys, indices, checksums, timings and checks, never a secret.
"""

from __future__ import annotations

from typing import Any

from jaco.public import BackupMeta


def backup_report(
    cluster: str,
    bucket: str,
    local_dir: str,
    meta: BackupMeta,
    key: str,
    encrypted: Any,
    stages: list[dict[str, Any]],
    pruned: list[dict[str, Any]],
) -> str:
    lines = [
        f"# Backup of `{cluster}` (cluster `{meta.cluster_id}`)",
        "",
        f"- snapshot index **{meta.snapshot_index}**, term {meta.snapshot_term}, "
        f"leader at snapshot `{meta.leader_at_snapshot}`, taken {meta.taken_at.isoformat()}",
        f"- object `s3://{bucket}/{key}` and a local copy in `{local_dir}`",
        f"- archive {encrypted.size} bytes encrypted; plaintext SHA-256 "
        f"`{encrypted.plaintext_sha256}`",
        f"- ciphertext SHA-256 `{encrypted.ciphertext_sha256}`",
        f"- snapshot SHA-256 `{meta.snapshot_sha256}`, state digest `{meta.state_digest}`",
        f"- records: {', '.join(f'{k} {v}' for k, v in meta.counts.items())}",
        "",
        "| stage | seconds | bytes | MiB/s |",
        "|---|---|---|---|",
    ]
    lines += [f"| {r['stage']} | {r['seconds']} | {r['bytes']} | {r['MiB/s']} |" for r in stages]
    for p in pruned:
        verb = "would delete" if p["dry_run"] else "deleted"
        lines.append(
            f"\nRetention on {p['store']}: {verb} {len(p['deleted'])}, kept "
            f"{len(p['kept'])}, {len(p['locked'])} under object lock."
        )
    return "\n".join(lines)


def drill_report(
    cluster: str,
    driver: str,
    key: str,
    meta: BackupMeta,
    timings: dict[str, float],
    report: dict[str, Any],
    rto: float,
) -> str:
    lines = [
        f"# Restore drill of `{cluster}`: {'PASSED' if report['ok'] else 'FAILED'}",
        "",
        f"- backup `{key}` (index {meta.snapshot_index}, taken {meta.taken_at.isoformat()})",
        f"- sandbox `{report['sandbox']}` ({driver}), wiped",
        f"- **RTO {rto:.1f} s**: download {timings['download_seconds']:.2f} s, decrypt "
        f"{timings['decrypt_seconds']:.2f} s, restore "
        f"{report['timings'].get('restore_seconds', 0):.2f} s, ready "
        f"{report['timings'].get('ready_seconds', 0):.2f} s",
        "",
        "| check | result | detail |",
        "|---|---|---|",
    ]
    lines += [
        f"| {c['name']} | {'pass' if c['ok'] else '**FAIL**'} | {c['detail']} |"
        for c in report["checks"]
    ]
    return "\n".join(lines)
