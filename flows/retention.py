"""Which backups to keep: the last N, plus grandfather-father-son (daily, weekly, monthly).

Backups are identified by their key, `…/{YYYY}/{MM}/{DD}/cluster-{YYYY-MM-DD}-{index}.tar.gz.age`:
the date and snapshot index order them. For each daily/weekly/monthly bucket the newest verified
backup is kept (the newest, if none is verified). The newest verified backup is never deleted,
nor are objects under object lock.
"""

from __future__ import annotations

import datetime as dt
import re
from collections.abc import Collection
from dataclasses import dataclass

from pydantic import BaseModel, Field

KEY_RE = re.compile(r"cluster-(\d{4}-\d{2}-\d{2})-(\d+)\.tar\.gz\.age$")


class RetentionPolicy(BaseModel):
    keep_last: int = Field(7, ge=1, description="Always keep this many newest backups.")
    daily: int = Field(
        7,
        ge=0,
        description="Keep a backup of each of the last N days: its newest verified one (its "
        "newest, if none is verified).",
    )
    weekly: int = Field(4, ge=0, description="…of each of the last N ISO weeks.")
    monthly: int = Field(12, ge=0, description="…of each of the last N months.")
    dry_run: bool = Field(False, description="Report what would be deleted; delete nothing.")


@dataclass(frozen=True)
class Backup:
    key: str
    day: dt.date
    index: int


def parse_key(key: str) -> Backup | None:
    match = KEY_RE.search(key)
    if not match:
        return None
    return Backup(key, dt.date.fromisoformat(match.group(1)), int(match.group(2)))


def to_keep(
    backups: list[Backup], policy: RetentionPolicy, verified: Collection[str] = ()
) -> set[str]:
    """The keys to keep: the `keep_last` newest, and for each of the last daily, weekly and
    monthly periods its newest backup among those `verified` names, or its newest if it has
    none verified (one that verify could not finish must not take a period's only slot)."""
    ordered = sorted(backups, key=lambda b: (b.day, b.index), reverse=True)
    keep = {b.key for b in ordered[: policy.keep_last]}
    buckets = [
        (policy.daily, lambda b: b.day),
        (policy.weekly, lambda b: b.day.isocalendar()[:2]),
        (policy.monthly, lambda b: (b.day.year, b.day.month)),
    ]
    for count, bucket_of in buckets:
        chosen: dict[object, str] = {}
        for backup in ordered:  # newest first: a bucket's backups follow each other
            bucket = bucket_of(backup)
            if bucket not in chosen:
                if len(chosen) == count:
                    break
                chosen[bucket] = backup.key
            elif backup.key in verified and chosen[bucket] not in verified:
                chosen[bucket] = backup.key
        keep |= set(chosen.values())
    return keep
