"""A flow process keeps at most two malloc arenas (flows.memory), whatever its threads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

PROBE = """
import ctypes, sys, threading
if sys.argv[1] == "flows":
    import flows
together = threading.Barrier(13)
held = []
def thread():
    held.append(bytearray(256 * 1024))  # malloc'd in this thread: its arena is chosen now
    together.wait()
    together.wait()
threads = [threading.Thread(target=thread) for _ in range(12)]
for t in threads:
    t.start()
together.wait()  # all twelve alive, each holding its allocation
libc = ctypes.CDLL(None)
libc.fopen.restype = ctypes.c_void_p
out = libc.fopen(sys.argv[2].encode(), b"w")
libc.malloc_info(0, ctypes.c_void_p(out))
libc.fclose(ctypes.c_void_p(out))
together.wait()
for t in threads:
    t.join()
"""


def arenas(tmp_path: Path, imports: str, **env: str) -> int:
    """The arenas glibc reports (malloc_info) once twelve threads have each allocated."""
    report = tmp_path / f"{imports}-{len(env)}.xml"
    environ = {k: v for k, v in os.environ.items() if k != "MALLOC_ARENA_MAX"}
    subprocess.run(
        [sys.executable, "-c", PROBE, imports, str(report)],
        env={**environ, **env},
        check=True,
        timeout=60,
    )
    return len(re.findall(r'<heap nr="\d+">', report.read_text()))


def test_importing_the_flows_caps_the_arenas_at_two(tmp_path: Path) -> None:
    assert arenas(tmp_path, "none") > 2  # the probe sees glibc's default: an arena per thread
    assert arenas(tmp_path, "flows") <= 2


def test_an_operators_malloc_arena_max_wins(tmp_path: Path) -> None:
    assert 2 < arenas(tmp_path, "flows", MALLOC_ARENA_MAX="4") <= 4
