"""glibc malloc settings (jaco.memory): a flow process keeps at most two arenas, whatever its
threads; `jaco backup` keeps freed memory for its next 1 MiB messages rather than returning it
to the kernel and faulting it in again; what the operator set (MALLOC_*, GLIBC_TUNABLES) wins."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from jaco.errors import Unavailable

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

# What a backup's client does with its messages: `held` blocks of `mib` MiB alive at once
# (four of 1 MiB by default), then freed together, a hundred rounds. glibc's default returns
# the heap's top once 2 MiB of it are free, so every round maps its pages again. Prints the
# page faults of the rounds.
FAULT_PROBE = """
import resource, sys
if sys.argv[1] == "keep":
    from jaco.memory import keep_freed_memory
    keep_freed_memory()
elif sys.argv[1] == "flows":
    import flows
held, mib = (int(sys.argv[2]), int(sys.argv[3])) if len(sys.argv) > 3 else (4, 1)
def message():
    block = bytearray(mib * 1024 * 1024 + 100)
    block[::4096] = b"\\1" * len(block[::4096])  # written, as a received message is
    return block
message()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(100):
    blocks = [message() for _ in range(held)]
    del blocks
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""
MIB_PAGES = 1024 * 1024 // 4096
ROUNDS_PAGES = 100 * 4 * MIB_PAGES  # every page of every round's messages
# What jaco.memory promises, as numbers of the test's own (the module's constants may break):
KEPT_MIB = 8  # freed memory kept at a heap's top
HEAP_MIB = 4  # blocks under this come from the heap
KEPT = KEPT_MIB * MIB_PAGES  # pages: the first round's, and no more


def _environ(**env: str) -> dict[str, str]:
    """This environment without the machine's own malloc settings, and with `env`."""
    clean = {
        k: v for k, v in os.environ.items() if not k.startswith("MALLOC_") and k != "GLIBC_TUNABLES"
    }
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


def faults(setting: str, held: int = 4, mib: int = 1, **env: str) -> int:
    """The page faults of FAULT_PROBE's hundred rounds of `held` blocks of `mib` MiB."""
    done = subprocess.run(
        [sys.executable, "-c", FAULT_PROBE, setting, str(held), str(mib)],
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


def test_an_operators_arena_cap_wins(tmp_path: Path) -> None:
    assert 2 < arenas(tmp_path, "flows", MALLOC_ARENA_MAX="4") <= 4
    assert 2 < arenas(tmp_path, "flows", GLIBC_TUNABLES="glibc.malloc.arena_max=4") <= 4


def test_freed_messages_are_kept_for_the_next_ones() -> None:
    # glibc's default maps nearly every page of every round again: the test's control
    assert faults("none") > ROUNDS_PAGES // 4
    # kept: the rounds reuse the first one's pages, up to the 8 MiB promised
    assert faults("keep") < KEPT
    assert faults("keep", held=6) < KEPT
    assert faults("keep", held=2, mib=HEAP_MIB - 1) < KEPT  # 3 MiB blocks: from the heap


def test_the_flows_leave_the_thresholds_alone() -> None:
    # measured: no gain in a flow's process (docs/benchmarks.md, stop 44)
    assert faults("flows") > ROUNDS_PAGES // 4


def test_memory_freed_past_the_threshold_is_still_given_back() -> None:
    # 10 MiB freed at once is more than the 8 MiB kept: each round maps it again
    assert faults("keep", held=10) > 100 * 10 * MIB_PAGES // 2
    # and blocks of 4 MiB and more are mapped each time they are made, never kept
    assert faults("keep", held=1, mib=HEAP_MIB + 1) > 100 * (HEAP_MIB + 1) * MIB_PAGES // 2


def test_what_the_operator_set_wins_and_the_other_threshold_is_still_set() -> None:
    small = str(128 * 1024)
    # the operator's small threshold is theirs: the rounds map their pages again
    assert faults("keep", MALLOC_TRIM_THRESHOLD_=small) > ROUNDS_PAGES // 4
    assert faults("keep", MALLOC_MMAP_THRESHOLD_=small) > ROUNDS_PAGES // 4
    assert faults("keep", GLIBC_TUNABLES=f"glibc.malloc.trim_threshold={small}") > ROUNDS_PAGES // 4
    # the operator's trim threshold alone (as large as jaco's) would fix the mmap threshold at
    # 128 KiB, every message mapped afresh; jaco still sets that one
    assert faults("none", MALLOC_TRIM_THRESHOLD_=str(KEPT_MIB * 2**20)) > ROUNDS_PAGES // 4
    assert faults("keep", MALLOC_TRIM_THRESHOLD_=str(KEPT_MIB * 2**20)) < KEPT


def test_keep_freed_memory_names_what_it_set() -> None:
    probe = "from jaco.memory import keep_freed_memory; print(','.join(keep_freed_memory()))"
    for env, expected in (
        ({}, "MALLOC_MMAP_THRESHOLD_,MALLOC_TRIM_THRESHOLD_"),
        ({"MALLOC_TRIM_THRESHOLD_": "1048576"}, "MALLOC_MMAP_THRESHOLD_"),
        ({"GLIBC_TUNABLES": "glibc.malloc.mmap_threshold=1048576"}, "MALLOC_TRIM_THRESHOLD_"),
        (
            {"GLIBC_TUNABLES": "glibc.malloc.arena_max=4:glibc.malloc.trim_threshold=1048576"},
            "MALLOC_MMAP_THRESHOLD_",
        ),
    ):
        done = subprocess.run(
            [sys.executable, "-c", probe],
            env=_environ(**env),
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.stdout.strip() == expected


def test_the_backup_command_keeps_freed_memory(tmp_path: Path) -> None:
    # `jaco backup` run in the probe's process first, refused as it connects (nothing listens
    # on the port), then the rounds: they find the setting the command made
    token = f"jaco1.op.{'0' * 64}.{'0' * 12}.{'A' * 43}"  # well formed, known to no one
    command = (
        "import sys\n"
        "from jaco.cli.main import main\n"
        "probe_argv = sys.argv\n"
        f"sys.argv = ['jaco', 'backup', '-o', {str(tmp_path / 'a.tar.gz')!r}, "
        "'--server', '127.0.0.1:1', '--timeout', '1']\n"
        "try:\n    main()\nexcept SystemExit as exc:\n    print(exc.code)\n"
        "sys.argv = probe_argv\n"
    )
    probe = FAULT_PROBE.replace("import resource, sys\n", f"import resource, sys\n{command}")
    done = subprocess.run(
        [sys.executable, "-c", probe, "cli"],
        env=_environ(JACO_TOKEN=token),
        check=True,
        timeout=60,
        capture_output=True,
        text=True,
    )
    code, rounds = done.stdout.splitlines()[-2:]
    assert int(code) == Unavailable.exit_code, done.stderr  # refused where it connects
    assert "127.0.0.1:1" in done.stderr
    assert int(rounds) < KEPT
    assert not list(tmp_path.iterdir())  # nothing written by the refused backup
