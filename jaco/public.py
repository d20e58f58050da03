"""The face of jaco that the pipeline (flows/) uses: import from here, nothing deeper.

Taking a backup from a cluster, reading and encrypting archives, the typed meta.json, the
errors (each says whether a retry could help), and the file helpers. Everything else in jaco
is free to move without touching the pipeline.
"""

from __future__ import annotations

from jaco.archive.age import (
    DecryptionFailed,
    HashingWriter,
    encrypt_file,
    is_age_file,
    load_identities,
    parse_identities,
    parse_recipient,
)
from jaco.archive.encrypted import decrypt_and_read_archive
from jaco.archive.format import read_archive, read_archive_stream
from jaco.archive.meta import AuditHead, BackupMeta
from jaco.archive.segment import (
    SEGMENT_SUFFIX,
    RevisionRecord,
    SegmentBuilder,
    SegmentMeta,
    encrypt_segment,
    segment_name,
)
from jaco.client.backup import BackupResult, take_backup
from jaco.client.changes import Progress, follow_changes
from jaco.client.connection import Client, open_client
from jaco.client.history import cluster_id, random_point
from jaco.errors import (
    ArchiveError,
    Compacted,
    IncompatibleVersion,
    InvalidArgument,
    JacoError,
    NotFound,
    PermissionDenied,
    TrustError,
    Unauthenticated,
    Unavailable,
    is_retryable,
)
from jaco.files import (
    WriteBehind,
    create_private,
    private_output,
    sha256_file,
    sweep_partials,
    write_private,
)
from jaco.memory import cap_malloc_arenas
from jaco.streams import ChunkReader, HashingReader

__all__ = [
    "ArchiveError",
    "AuditHead",
    "BackupMeta",
    "BackupResult",
    "ChunkReader",
    "Client",
    "Compacted",
    "DecryptionFailed",
    "HashingReader",
    "HashingWriter",
    "IncompatibleVersion",
    "InvalidArgument",
    "JacoError",
    "NotFound",
    "PermissionDenied",
    "Progress",
    "RevisionRecord",
    "SEGMENT_SUFFIX",
    "SegmentBuilder",
    "SegmentMeta",
    "TrustError",
    "Unauthenticated",
    "Unavailable",
    "WriteBehind",
    "cap_malloc_arenas",
    "cluster_id",
    "create_private",
    "decrypt_and_read_archive",
    "encrypt_file",
    "encrypt_segment",
    "follow_changes",
    "is_age_file",
    "is_retryable",
    "load_identities",
    "open_client",
    "parse_identities",
    "parse_recipient",
    "private_output",
    "random_point",
    "read_archive",
    "read_archive_stream",
    "segment_name",
    "sha256_file",
    "sweep_partials",
    "take_backup",
    "write_private",
]
