"""Text from the store reaches the terminal as text: rich markup shown literally, escape
sequences and newlines shown as \\xNN, never acted on.

The hostile strings enter as an operator could put them (a token description, an image, an
env value) or as only tampering could (a route host written with etcdctl: the API refuses
it). Each listing is read twice: as a pipe (no escape byte at all may appear) and with
FORCE_COLOR set, where rich styles its own output, so the payload's own sequences must not
appear (tests/unit/test_safe.py shows rich would act on them unescaped).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator

import pytest

from infra.localcluster import Cluster, cluster_of
from jaco.model.keys import P_ROUTES, encode

MARKUP = "[bold red blink]pwned[/]"
LINK = "[link=https://evil.example]click[/link]"
CLEAR = "\x1b[2J\x1b[31m"  # clear the screen, turn red
OSC_LINK = "\x1b]8;;https://evil.example\x07x\x1b]8;;\x07"  # a terminal hyperlink
NEWLINE = "line\nforged: ok"
HOSTILE = [MARKUP, LINK, CLEAR, OSC_LINK, NEWLINE]
PAYLOAD_BYTES = ["\x1b[2J", "\x1b[31m", "\x1b[5m", "\x1b]8;", "\nforged: ok"]


@pytest.fixture(scope="module")
def hostile(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    with cluster_of(tmp_path_factory.mktemp("hostile"), 1) as cluster:
        text = "".join(HOSTILE)
        cluster.ok("token", "create", "--role", "viewer", "--description", text)
        image = "x:1" + MARKUP.replace(" ", "") + CLEAR + OSC_LINK  # no whitespace in images
        cluster.ok("deploy", "web", "--image", image, "--replicas", "1", "--env", f"NOTE={text}")
        route = {
            "name": "evil",
            "host": LINK + CLEAR + NEWLINE,
            "path": "/" + MARKUP,
            "deployment": "web",
            "port": 80,
            "created_at": "2026-01-01T00:00:00+00:00",
        }
        etcdctl = cluster.nodes["node-1"].etcdctl_command()
        subprocess.run([*etcdctl, "put", P_ROUTES + "evil", encode(route)], check=True)
        yield cluster


LISTINGS = [
    (["status"], ["[bold", CLEAR.encode("unicode_escape").decode()]),
    (["token", "ls"], [MARKUP, LINK, "\\x1b[2J", "line\\nforged: ok"]),
    (["route", "ls"], [LINK, "\\x1b[2J"]),
    (["audit", "--type", "DEPLOYMENT_CREATED"], ["[bold", "\\u001b"]),
]


@pytest.mark.parametrize(("args", "shown"), LISTINGS, ids=[" ".join(a[0]) for a in LISTINGS])
def test_listings_show_hostile_text_literally(
    hostile: Cluster, args: list[str], shown: list[str]
) -> None:
    plain = hostile.ok(*args, env={"COLUMNS": "1000"})
    assert "\x1b" not in plain.out + plain.err, repr(plain.out)
    for text in shown:
        assert text in plain.out, f"{text!r} not shown in {plain.out!r}"
    forced = hostile.ok(*args, env={"FORCE_COLOR": "1", "COLUMNS": "1000"})
    if args[0] != "audit":  # tables are styled: a terminal was assumed
        assert "\x1b[" in forced.out
    for payload in PAYLOAD_BYTES:
        assert payload not in forced.out + forced.err, f"{payload!r} reached the terminal"


def test_json_listings_escape_control_characters(hostile: Cluster) -> None:
    for args in (["status", "--json"], ["token", "ls", "--json"], ["route", "ls", "--json"]):
        shown = hostile.ok(*args)
        assert "\x1b" not in shown.out and "\\u001b" in shown.out
        json.loads(shown.out)
    env = hostile.ok("status", "--json").json()["deployments"][0]["env"]["NOTE"]
    assert env == "".join(HOSTILE)  # stored and returned exactly, only escaped in transit
