"""Change segments read from S3 for `jaco restore --segments s3://…` (through the pipeline's
store, with the AWS chain's credentials): the pipeline's modules load only when it is used."""

from __future__ import annotations

from typing import Any

from jaco.archive.segment import MAX_SEGMENT_BYTES, SEGMENT_SUFFIX
from jaco.errors import ArchiveError, InvalidArgument


class S3Source:
    """One chain's segments: s3://BUCKET/PREFIX/segments/CLUSTER/BACKUP."""

    def __init__(self, url: str) -> None:
        from flows.storage import open_store

        bucket, _, prefix = url[len("s3://") :].partition("/")
        if not bucket or not prefix.strip("/"):
            raise InvalidArgument(
                f"--segments {url}: use s3://BUCKET/PREFIX/segments/CLUSTER/BACKUP"
            )
        self.store: Any = open_store(f"s3://{bucket}")
        self.prefix = prefix.strip("/") + "/"
        self.sizes: dict[str, int] = {}

    def names(self) -> list[str]:
        for obj in self.store.list(self.prefix):  # a StorageError says why not, in one line
            name = obj.key[len(self.prefix) :]
            if "/" not in name and name.endswith(SEGMENT_SUFFIX):
                self.sizes[name] = obj.size
        return sorted(self.sizes)

    def read(self, name: str) -> bytes:
        if self.sizes.get(name, 0) > MAX_SEGMENT_BYTES:
            raise ArchiveError(f"segment {name} is larger than any segment the stream writes")
        data = self.store.get_bytes(self.prefix + name)
        if data is None:
            raise ArchiveError(f"segment {name} vanished from the store while being read")
        return bytes(data)
