"""glibc malloc settings (jaco.memory): a flow process keeps at most two arenas, whatever its
threads; `jaco backup` and the flows keep freed memory for the next 1 MiB messages rather than
returning it to the kernel and faulting it in again; an operator's own MALLOC_* wins."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from jaco.memory import TRIM_THRESHOLD

ARENA_PROBE = """
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

# What a backup's client does with its messages: a few 1 MiB blocks alive at once, then freed
# together. glibc's default returns the heap's top once 2 MiB of it are free, so every round
# maps its pages again. Prints the page faults of the rounds.
FAULT_PROBE = """
import resource, sys
if sys.argv[1] == "flows":
    import flows
elif sys.argv[1] == "keep":
    from jaco.memory import keep_freed_memory
    assert keep_freed_memory()
def message():
    block = bytearray(1024 * 1024 + 100)
    block[::4096] = b"\\1" * len(block[::4096])  # written, as a received message is
    return block
message()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    held = [message() for _ in range(4)]
    del held
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
ROUNDS_PAGES = 100 * 4 * (1024 * 1024 // 4096)  # every page of every round's messages


def _environ(**env: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    return {**clean, **env}


def arenas(tmp_path: Path, imports: str, **env: str) -> int:
    """The arenas glibc reports (malloc_info) once twelve threads have each allocated."""
    report = tmp_path / f"{imports}-{len(env)}.xml"
    subprocess.run(
        [sys.executable, "-c", ARENA_PROBE, imports, str(report)],
        env=_environ(**env),
        check=True,
        timeout=60,
    )
    return len(re.findall(r'<heap nr="\d+">', report.read_text()))


def faults(setting: str, **env: str) -> int:
    """The page faults of FAULT_PROBE's hundred rounds of four 1 MiB messages."""
    done = subprocess.run(
        [sys.executable, "-c", FAULT_PROBE, setting],
        env=_environ(**env),
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    return int(done.stdout)


def test_importing_the_flows_caps_the_arenas_at_two(tmp_path: Path) -> None:
    assert arenas(tmp_path, "none") > 2  # the probe sees glibc's default: an arena per thread
    assert arenas(tmp_path, "flows") <= 2


def test_an_operators_malloc_arena_max_wins(tmp_path: Path) -> None:
    assert 2 < arenas(tmp_path, "flows", MALLOC_ARENA_MAX="4") <= 4


@pytest.mark.parametrize("setting", ["keep", "flows"])
def test_freed_messages_are_kept_for_the_next_ones(setting: str) -> None:
    # glibc's default faults a round's pages in again, one in three here: the test's control
    assert faults("none") > ROUNDS_PAGES // 4
    # kept: the rounds reuse the first one's pages (4 MiB + its top pad, under TRIM_THRESHOLD)
    assert faults(setting) < TRIM_THRESHOLD // 4096


def test_an_operators_malloc_thresholds_win() -> None:
    chosen = faults("flows", MALLOC_TRIM_THRESHOLD_=str(128 * 1024))
    assert chosen > ROUNDS_PAGES // 4  # the operator's small trim threshold, not jaco's
    assert faults("flows", MALLOC_MMAP_THRESHOLD_=str(128 * 1024)) > ROUNDS_PAGES // 4


def test_keep_freed_memory_defers_to_the_environment() -> None:
    probe = "from jaco.memory import keep_freed_memory; print(keep_freed_memory())"
    for env in ({}, {"MALLOC_TRIM_THRESHOLD_": "1048576"}):
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env=_environ(**env),
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.stdout.strip() == ("False" if env else "True")


def test_the_backup_command_keeps_freed_memory(tmp_path: Path) -> None:
    # `jaco backup` run in the probe's process first (refused: nothing listens on the port),
    # then the rounds: they find the setting the command made
    command = (
        "import sys\n"
        "from jaco.cli.main import main\n"
        f"sys.argv = ['jaco', 'backup', '-o', {str(tmp_path / 'a.tar.gz')!r}, "
        "'--server', '127.0.0.1:1', '--timeout', '1']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    assert exc.code, 'the backup ran'\n"
    )
    probe = FAULT_PROBE.replace("import resource, sys\n", f"import resource, sys\n{command}")
    done = subprocess.run(
        [sys.executable, "-c", probe, "cli"],
        env=_environ(JACO_TOKEN="jt_unused"),
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    assert int(done.stdout.splitlines()[-1]) < TRIM_THRESHOLD // 4096
    assert not list(tmp_path.iterdir())  # nothing written by the refused backup
