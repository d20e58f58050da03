"""jaco.archive.key_order and the state digest it feeds: the bounded-memory path gives exactly
what holding every key in a dict gave, on histories with overwrites, deletions and
re-creations, whether the records fit in one run or spill into many."""

from __future__ import annotations

import hashlib
import random
from collections import Counter
from pathlib import Path

import pytest

from jaco.archive.key_order import latest_in_key_order
from jaco.errors import InvalidArgument
from jaco.model.digest import V2_TAG, StateDigest, StateDigestV2, digest_for
from jaco.model.keys import B_ALIVE, B_ROOT, ROOT


def _history(seed: int, n: int) -> list[tuple[bytes, bytes | tuple[int, int] | None]]:
    rng = random.Random(seed)
    keys = [f"{ROOT}t{rng.randrange(5)}/{rng.randrange(n // 3):06d}".encode() for _ in range(n)]
    out: list[tuple[bytes, bytes | tuple[int, int] | None]] = []
    for i, key in enumerate(keys):
        roll = rng.random()
        if roll < 0.15:
            out.append((key, None))  # a deletion (of a key that may not exist)
        elif roll < 0.2:
            out.append((key, (i * 4096, 70000)))  # a large record: where it lies
        else:
            out.append((key, rng.randbytes(rng.randrange(300))))
    return out


def _reference(records: list[tuple[bytes, bytes | tuple[int, int] | None]]) -> list[tuple]:
    latest: dict[bytes, bytes | tuple[int, int]] = {}
    for key, value in records:
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
    return sorted(latest.items())


@pytest.mark.parametrize("run_bytes", [1 << 30, 20_000, 300])
def test_latest_in_key_order_equals_a_dict_of_every_key(run_bytes: int, tmp_path: Path) -> None:
    for seed in range(4):
        records = _history(seed, 3000)
        got = list(latest_in_key_order(iter(records), tmp_path, run_bytes))
        assert got == _reference(records)
    assert list(tmp_path.iterdir()) == []  # spilled runs leave nothing behind


def test_a_deletion_in_a_later_run_hides_the_key(tmp_path: Path) -> None:
    records = [(b"a", b"1"), (b"b", b"1"), (b"a", None), (b"c", b"1"), (b"b", b"2")]
    # One record per run: every key's versions sit in different runs.
    assert list(latest_in_key_order(iter(records), tmp_path, 1)) == [(b"b", b"2"), (b"c", b"1")]


def test_archive_bytes_that_are_marshal_data_come_back_as_the_same_bytes(tmp_path: Path) -> None:
    """A hostile store's keys and values spilled to sorted runs stay the contents of bytes
    objects (a marshalled code object, a marshalled list, truncated marshal, a pickle, bytes
    shaped like the spill's own length prefixes and tags), never structure; every record
    spilled on its own."""
    import marshal
    import pickle

    hostile = [
        marshal.dumps(compile("import os; os.system('id')", "x", "exec")),
        marshal.dumps([(b"k", None), (b"injected", (1, 2))]),
        marshal.dumps((b"a", b"b"))[:-1],
        pickle.dumps(["not", "structure"]),
        b"\x00\x00\x00\x01k\x02" + b"\xff" * 12,
        b"\x00" * 9,
    ]
    records = [(f"{ROOT}k{i}".encode() + h, h) for i, h in enumerate(hostile)]
    got = list(latest_in_key_order(iter(records), tmp_path, 1))
    assert got == sorted(records)
    assert all(type(k) is bytes and type(v) is bytes for k, v in got)


def _digest_as_first_defined(records: list[tuple[bytes, bytes]]) -> tuple[dict[str, int], str]:
    """The state digest's definition, written out plainly: three updates per record, tables
    counted from the decoded key."""
    sha = hashlib.sha256()
    counts: Counter[str] = Counter()
    for key, value in records:
        if not key.startswith(B_ROOT) or key.startswith(B_ALIVE):
            continue
        sha.update(len(key).to_bytes(4, "big") + key)
        sha.update(len(value).to_bytes(8, "big"))
        sha.update(value)
        counts[key.decode()[len(ROOT) :].split("/", 1)[0]] += 1
    return dict(sorted(counts.items())), sha.hexdigest()


def test_state_digest_keeps_its_definition() -> None:
    rng = random.Random(3)
    records = sorted(
        (f"{ROOT}{table}/{rng.randrange(10**6)}".encode(), rng.randbytes(rng.randrange(400)))
        for table in ("deployments", "audit/events", "alive", "certs/issued", "é")
        for _ in range(500)
    ) + [(b"/elsewhere/x", b"y"), (B_ROOT + b"cluster", b"{}")]
    digest = StateDigest()
    for key, value in records:
        digest.add(key, value)
    assert digest.result() == _digest_as_first_defined(records)


def _digest_v2_as_defined(records: list[tuple[bytes, bytes]]) -> tuple[dict[str, int], str]:
    """Version 2, written out plainly: the tag, then each key and its value's own SHA-256."""
    sha = hashlib.sha256(b"jaco state digest v2\n")
    counts: Counter[str] = Counter()
    for key, value in records:
        if not key.startswith(B_ROOT) or key.startswith(B_ALIVE):
            continue
        sha.update(len(key).to_bytes(4, "big") + key)
        sha.update(hashlib.sha256(value).digest())
        counts[key.decode()[len(ROOT) :].split("/", 1)[0]] += 1
    return dict(sorted(counts.items())), sha.hexdigest()


def test_state_digest_v2_keeps_its_definition() -> None:
    rng = random.Random(4)
    records = sorted(
        (f"{ROOT}{table}/{rng.randrange(10**6)}".encode(), rng.randbytes(rng.randrange(9000)))
        for table in ("deployments", "audit/events", "alive", "certs/issued", "é")
        for _ in range(300)
    ) + [(b"/elsewhere/x", b"y"), (B_ROOT + b"cluster", b"{}")]
    one, two = digest_for(1), digest_for(2)
    for key, value in records:
        one.add(key, value)
        two.add(key, value)
    assert isinstance(two, StateDigestV2) and two.version == 2 and one.version == 1
    assert two.result() == _digest_v2_as_defined(records)
    # the same counts, another digest: the versions can never be mistaken for each other
    assert one.result()[0] == two.result()[0] and one.result()[1] != two.result()[1]


def test_state_digest_v2_known_answer() -> None:
    """A fixed vector, so the definition cannot drift with its restatement above; the empty
    store's digests differ between the versions (the tag)."""
    digest = StateDigestV2()
    digest.add(b"/jaco/v1/cluster", b'{"cluster_id":"c1"}')
    digest.add(b"/jaco/v1/deployments/web", b'{"replicas":3}')
    digest.add(b"/jaco/v1/alive/node-1", b"ignored: liveness")
    digest.add(b"/jaco/v1/tokens/abc", b"")
    assert digest.result() == (
        {"cluster": 1, "deployments": 1, "tokens": 1},
        "3c28efc68f631fdc94d0759e03dbcd9e18eceb86528a1d0460a5f2fd670f14cc",
    )
    assert StateDigestV2().result()[1] == hashlib.sha256(V2_TAG).hexdigest()
    assert StateDigest().result()[1] == hashlib.sha256(b"").hexdigest()


def test_an_unknown_digest_version_is_refused() -> None:
    for version in (0, 3, -1):
        with pytest.raises(InvalidArgument) as refused:
            digest_for(version)
        assert str(refused.value) == (
            f"state digest version {version} is not known to this jaco (it knows 1, 2)"
        )
