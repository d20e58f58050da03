"""The drill agent's input line, from the pipeline: what it names is checked before anything
is written (segment names become files in the sandbox)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from jaco.archive.encrypted import Decryption
from jaco.drill.agent import Drill, Point
from jaco.drill.checks import Expect

DIGEST = "0" * 64


def test_a_point_names_its_segments_and_their_sizes() -> None:
    point = Point.parse(
        {"revision": 42, "state_digest": DIGEST, "segments": [["0000000000000031.seg.age", 9]]}
    )
    assert point == Point(42, DIGEST, [("0000000000000031.seg.age", 9)])


@pytest.mark.parametrize(
    ("name", "size"),
    [
        ("../../etc/cron.d/x", 9),
        ("/tmp/0000000000000031.seg.age", 9),
        ("0000000000000031.seg.age/..", 9),
        ("0000000000000031.seg.age", 0),
        ("0000000000000031.seg.age", 1 << 40),
    ],
)
def test_a_segment_name_or_size_that_is_not_a_segment_is_refused(
    name: str, size: int, tmp_path: Path
) -> None:
    with pytest.raises(ValueError, match="is not a segment"):
        Point.parse({"revision": 42, "state_digest": DIGEST, "segments": [[name, size]]})
    # the agent itself: one line, exit 2, nothing written where its data would go
    header = {
        "token": "t",
        "identity": "i",
        "expect": {"cluster_id": "c"},
        "point": {"revision": 42, "state_digest": DIGEST, "segments": [[name, size]]},
    }
    done = subprocess.run(
        [sys.executable, "-m", "jaco.drill.agent"],
        input=json.dumps(header).encode() + b"\n",
        capture_output=True,
        env={"JACO_DATA_DIR": str(tmp_path / "data"), "TMPDIR": str(tmp_path / "work")},
        timeout=60,
    )
    err = done.stderr.decode()
    assert done.returncode == 2, err
    assert err.startswith("the drill's input is not what the pipeline sends: segment ")
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert done.stdout == b"" and list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    ("recorded", "ok", "detail"),
    [
        ("a" * 64, True, "9 bytes decrypted into the restore: the one recorded"),
        ("b" * 64, False, "it decrypts to another archive than the one recorded"),
        ("", False, "no SHA-256 of it was recorded: nothing to hold it to"),
    ],
    ids=["the one recorded", "another", "none recorded"],
)
def test_the_backup_is_held_to_the_plaintext_sha256_recorded(
    recorded: str, ok: bool, detail: str
) -> None:
    """The agent's first check: the archive it decrypted is the one the pipeline recorded
    (the ciphertext is the flow's to check); with no record, the check fails, not passes."""
    drill = Drill("t", "i", Expect(cluster_id="c", plaintext_sha256=recorded))
    assert drill._recorded(Decryption(plaintext_sha256="a" * 64, plaintext_size=9)) == (ok, detail)


def test_the_report_counts_the_cpu_of_what_the_agent_started_and_waited_for() -> None:
    """`cpu_seconds` is the sandbox's: the agent's own and its children's (the decrypter,
    jacod and etcd), not the agent's alone."""
    drill = Drill("t", "i", Expect(cluster_id="c"))
    before = drill.report()["timings"]["cpu_seconds"]
    burn = "import resource; sum(range(3 * 10**7)); r = resource.getrusage(resource.RUSAGE_SELF); "
    burn += "print(r.ru_utime + r.ru_stime)"
    child = float(subprocess.run([sys.executable, "-c", burn], capture_output=True, text=True,
                                 check=True).stdout)  # fmt: skip
    assert child > 0.2
    assert drill.report()["timings"]["cpu_seconds"] - before >= child - 0.02  # report rounds
