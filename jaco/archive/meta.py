"""meta.json: what a backup archive says about itself, as one typed, frozen record.

The seed's fields (cluster_id, snapshot_index, snapshot_term, jaco_version, taken_at,
leader_at_snapshot), then what makes the archive self-verifying (format, snapshot size and
SHA-256, per-table counts, state digest, CA fingerprint) and the audit head at the snapshot,
an anchor for `jaco audit verify --anchor`. Read from hostile input: the JSON is parsed with a
size bound and a nesting limit (pydantic's parser), every field has a type and a shape, so
nothing read from an archive can carry markup or control characters to a terminal.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from jaco import __version__
from jaco.errors import ArchiveError, IncompatibleVersion

# 3: as 2, its state digest of version 2 (jaco.model.digest); 2: snapshot.bin, then meta.json,
# digest version 1; 1: meta.json first, version 1. All three are read.
FORMAT: Literal[3] = 3
DIGEST_VERSION: Literal[2] = 2  # the state digest of FORMAT
MAX_META_BYTES = 64 * 1024
MAX_SNAPSHOT_BYTES = 64 * 1024**3

Sha256 = Annotated[str, Field(pattern=r"^[0-9a-f]{64}$")]
Name = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,62}$")]
Version = Annotated[str, Field(pattern=r"^[0-9]{1,4}\.[0-9]{1,4}\.[0-9]{1,4}[a-z0-9.+-]{0,20}$")]


def _utc(value: dt.datetime) -> dt.datetime:
    return value.astimezone(dt.UTC)


class AuditHead(BaseModel):
    """The last audit event in the snapshot: its number and hash (the chain's head)."""

    model_config = ConfigDict(frozen=True, strict=True, extra="forbid")

    seq: int = Field(ge=0)
    hash: Sha256


class BackupMeta(BaseModel):
    model_config = ConfigDict(frozen=True, strict=True, extra="ignore")

    cluster_id: Name
    snapshot_index: int = Field(ge=0)
    snapshot_term: int = Field(ge=0)
    jaco_version: Version
    taken_at: Annotated[dt.datetime, AfterValidator(_utc)]
    leader_at_snapshot: Name
    format: Literal[1, 2, 3]
    snapshot_sha256: Sha256
    snapshot_size: int = Field(ge=0, le=MAX_SNAPSHOT_BYTES)
    counts: dict[Annotated[str, Field(pattern=r"^[a-z_]{1,32}$")], Annotated[int, Field(ge=0)]]
    state_digest: Sha256
    ca_fingerprint: Sha256 | None = None
    audit_head: AuditHead | None = None

    @classmethod
    def parse(cls, raw: bytes | str) -> BackupMeta:
        """Validate meta.json as read from an archive or a stream; ArchiveError says why not."""
        if len(raw) > MAX_META_BYTES:
            raise ArchiveError("meta.json is larger than any real one")
        try:
            return cls.model_validate_json(raw)
        except ValidationError as exc:
            raise ArchiveError(f"meta.json is not valid: {_first_error(exc)}") from None

    def to_json(self) -> bytes:
        return self.model_dump_json(indent=2, exclude_none=True).encode() + b"\n"

    @property
    def digest_version(self) -> Literal[1, 2]:
        """Which state digest `state_digest` is (`jaco.model.digest`): version 2 from format 3
        on, version 1 in formats 1 and 2."""
        return 2 if self.format >= 3 else 1

    @property
    def taken_on(self) -> dt.date:
        return self.taken_at.date()

    def check_version(self, ours: str = __version__) -> None:
        """Intact, but can this jaco restore it? (Same major version.)"""
        if self.jaco_version.split(".")[0] != ours.split(".")[0]:
            raise IncompatibleVersion(
                f"the backup was taken by jaco {self.jaco_version}; this is jaco {ours}: "
                "restore needs the same major version"
            )


def _first_error(exc: ValidationError) -> str:
    """One line, naming the field; never echoes the offending input (it may be hostile)."""
    error = exc.errors(include_url=False)[0]
    where = ".".join(str(part) for part in error["loc"]) or "the document"
    if error["loc"] == ("format",) and type(error.get("input")) is int:
        return f"archive format {error['input']} is not supported (this jaco reads formats 1, 2, 3)"
    if error["type"] == "missing":
        return f"it lacks the field {where!r}"
    if error["type"] in ("json_invalid", "recursion_loop") or not error["loc"]:
        return "it is not a JSON object of the expected shape"
    return f"the field {where!r} has the wrong type or form"
