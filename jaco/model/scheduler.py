"""Replica placement: each new replica goes to the ready node running the fewest."""

from __future__ import annotations

from collections import Counter
from typing import Any

from jaco.errors import Unavailable


def ready_nodes(nodes: list[dict[str, Any]], alive: set[str], leaving: str = "") -> list[str]:
    """The voters that may take replicas: those alive (all of them when none reports alive,
    e.g. right after a restore), never `leaving`."""
    voters = [n["name"] for n in nodes if n.get("voter") and n["name"] != leaving]
    return [n for n in voters if n in alive] or voters


def place(nodes: list[str], current: Counter[str], count: int) -> list[str]:
    if not nodes:
        raise Unavailable("no node is ready to run replicas")
    load = Counter({n: current.get(n, 0) for n in nodes})
    chosen = []
    for _ in range(count):
        node = min(sorted(nodes), key=lambda n: load[n])
        load[node] += 1
        chosen.append(node)
    return chosen
