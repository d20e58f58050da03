"""Replica placement: each new replica goes to the ready node running the fewest."""

from __future__ import annotations

from collections import Counter

from jaco.errors import Unavailable


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
