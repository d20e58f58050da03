"""Type stubs of the compiled module (native/src/lib.rs)."""

from pathlib import Path

class SnapshotError(Exception): ...

def snapshot_state(
    path: Path,
    scratch: Path,
    root: bytes,
    alive: bytes,
    wanted: list[bytes],
    run_bytes: int,
) -> tuple[int, list[tuple[str, int]], str, list[tuple[bytes, bytes]]]: ...

class StreamPass:
    def __init__(
        self, scratch: Path, root: bytes, alive: bytes, wanted: list[bytes], run_bytes: int
    ) -> None: ...
    @property
    def ended(self) -> bool: ...
    def feed(self, data: bytes) -> None: ...
    def abort(self) -> None: ...
    def finish(self) -> tuple[int, list[tuple[str, int]], str, list[tuple[bytes, bytes]]]: ...
