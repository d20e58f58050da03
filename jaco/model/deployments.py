"""Deployments and their replicas: each replica gets an IP (IPAM) and a node (scheduler)."""

from __future__ import annotations

from collections import Counter
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any

from jaco.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from jaco.model import ipam, scheduler
from jaco.model.engine import Change, Engine, View
from jaco.model.etcd import FIRST_PAGE, PAGE_BYTES, prefix_end
from jaco.model.etcd_types import KV
from jaco.model.keys import (
    K_CLUSTER,
    P_ALIVE,
    P_DEPLOYMENTS,
    P_IPAM,
    P_NODES,
    P_REPLICAS,
    P_ROUTES,
    P_SCHEDULER,
    decode,
    now,
    replica_id,
)
from jaco.model.names import PAGE_DEPLOYMENTS, check_name, check_replicas

# A page of a deployment listing holds at most PAGE_DEPLOYMENTS deployments, and fewer where
# their records pass PAGE_BYTES or their replicas PAGE_REPLICAS (a deployment may have 100):
# the answer stays a few MiB however the cluster grows, far under the 64 MiB gRPC sends.
PAGE_REPLICAS = 20_000
SLACK = 100  # records beyond twice those expected that a page's shared range may hold


@dataclass
class DeploymentPage:
    deployments: list[dict[str, Any]]
    next_after: str  # the key (a name) of this page's last deployment when more follow, else ""
    revision: int  # the store revision every page of the listing is read at


class Deployments(Engine):
    async def _ready_nodes(self, view: View) -> list[str]:
        alive_kvs = await self.etcd.get_prefix(P_ALIVE)
        alive = {kv.key[len(P_ALIVE) :] for kv in alive_kvs}
        return scheduler.ready_nodes(await view.list(P_NODES), alive)

    async def _add_replicas(
        self, view: View, change: Change, deployment: str, first: int, count: int
    ) -> list[dict[str, Any]]:
        cluster = await view.get(K_CLUSTER)
        assert cluster is not None
        taken = [key[len(P_IPAM) :] for key in await view.keys(P_IPAM)]  # keyed by the IP
        ips = ipam.allocate(cluster["subnet"], taken, count)
        load = Counter(p["node"] for p in await view.list(P_SCHEDULER))
        nodes = scheduler.place(await self._ready_nodes(view), load, count)
        added = []
        for offset, (ip, node) in enumerate(zip(ips, nodes, strict=True)):
            index = first + offset
            rid = replica_id(deployment, index)
            replica = {"id": rid, "deployment": deployment, "index": index, "ip": ip}
            change.put(f"{P_REPLICAS}{deployment}/{index:04d}", replica)
            change.put(P_SCHEDULER + rid, {"replica": rid, "node": node, "placed_at": now()})
            change.put(P_IPAM + ip, {"ip": ip, "replica": rid})
            added.append({**replica, "node": node})
        return added

    async def _drop_replicas(
        self, view: View, change: Change, deployment: str, keep: int
    ) -> list[str]:
        dropped = []
        for replica in await view.list(f"{P_REPLICAS}{deployment}/"):
            if replica["index"] >= keep:
                change.delete(f"{P_REPLICAS}{deployment}/{replica['index']:04d}")
                change.delete(P_SCHEDULER + replica["id"])
                change.delete(P_IPAM + replica["ip"])
                dropped.append(replica["ip"])
        return dropped

    async def deploy(
        self, actor: str, name: str, image: str, replicas: int, env: dict[str, str]
    ) -> None:
        check_name("deployment", name)
        _check_image(image)
        check_replicas(replicas)

        async def fn(view: View, change: Change) -> None:
            if await view.get(P_DEPLOYMENTS + name) is not None:
                raise AlreadyExists(
                    f"deployment {name} already exists (use `jaco scale` or `jaco rm`)"
                )
            at = now()
            change.put(
                P_DEPLOYMENTS + name,
                {
                    "name": name,
                    "image": image,
                    "replicas": replicas,
                    "env": env,
                    "created_at": at,
                    "updated_at": at,
                },
            )
            placed = await self._add_replicas(view, change, name, 0, replicas)
            change.audit(
                "DEPLOYMENT_CREATED",
                name=name,
                image=image,
                replicas=replicas,
                ips=[r["ip"] for r in placed],
            )

        await self.mutate(actor, fn)

    async def scale(self, actor: str, name: str, replicas: int) -> None:
        check_replicas(replicas)

        async def fn(view: View, change: Change) -> None:
            dep = await view.get(P_DEPLOYMENTS + name)
            if dep is None:
                raise NotFound(f"no deployment named {name}")
            old = dep["replicas"]
            if replicas > old:
                await self._add_replicas(view, change, name, old, replicas - old)
            elif replicas < old:
                await self._drop_replicas(view, change, name, replicas)
            dep.pop("schema", None)
            change.put(P_DEPLOYMENTS + name, {**dep, "replicas": replicas, "updated_at": now()})
            change.audit("DEPLOYMENT_SCALED", name=name, replicas_from=old, replicas_to=replicas)

        await self.mutate(actor, fn)

    async def remove_deployment(self, actor: str, name: str) -> None:
        async def fn(view: View, change: Change) -> None:
            if await view.get(P_DEPLOYMENTS + name) is None:
                raise NotFound(f"no deployment named {name}")
            routed = [r["name"] for r in await view.list(P_ROUTES) if r["deployment"] == name]
            if routed:
                raise Conflict(
                    f"deployment {name} is the target of route(s) {', '.join(routed)}; "
                    "remove them first (`jaco route rm`)"
                )
            released = await self._drop_replicas(view, change, name, 0)
            change.delete(P_DEPLOYMENTS + name)
            change.audit("DEPLOYMENT_REMOVED", name=name, released_ips=released)

        await self.mutate(actor, fn)

    async def deployment(self, name: str) -> dict[str, Any] | None:
        """One deployment with its placed replicas, read at one revision from its own keys
        (Deploy and Scale answer with it)."""
        view = await self.view()
        d = await view.get(P_DEPLOYMENTS + name)
        if d is None:
            return None
        return {**d, "placed": (await self._placed(view, [name], d["replicas"]))[name]}

    async def deployment_page(self, after: str, limit: int, revision: int = 0) -> DeploymentPage:
        """The deployments named after `after` ("": from the first), in name order, with
        their placed replicas, at `revision` (0: now): at most `limit`, within the page's
        bounds. A page reads its own deployments' keys, never a whole table."""
        if after:
            check_name("deployment", after)
        view = await self.view()
        if not 0 <= revision <= view.revision:
            raise InvalidArgument(
                f"revision {revision} is not one of the store's (1 to {view.revision})"
            )
        view = View(self.etcd, revision or view.revision)
        limit = max(1, min(limit, PAGE_DEPLOYMENTS))
        page: list[dict[str, Any]] = []
        size = replicas = 0
        start = P_DEPLOYMENTS + after + "\0" if after else P_DEPLOYMENTS
        last = next_after = ""
        # A fifth of the page first, the rest sized from those records' bytes (at most 4x):
        # two reads for a page of small records, and no blind read of 5001 records that may
        # be 1.5 MiB each. etcd 3.4 counts the rest of the table on every read.
        first = -(-(limit + 1) // 5)
        listed = self.etcd.iter_range(
            start, prefix_end(P_DEPLOYMENTS), view.revision, first, most=limit + 1
        )
        async with aclosing(listed):
            async for kv in listed:
                d = decode(kv)
                size, replicas = size + len(kv.value), replicas + d["replicas"]
                if page and (len(page) == limit or size > PAGE_BYTES or replicas > PAGE_REPLICAS):
                    next_after = last  # the key's name, where the next page goes on from
                    break
                page.append(d)
                last = kv.key[len(P_DEPLOYMENTS) :]
        placed = await self._placed(
            view, [d["name"] for d in page], sum(d["replicas"] for d in page)
        )
        return DeploymentPage(
            [{**d, "placed": placed[d["name"]]} for d in page], next_after, view.revision
        )

    async def _placed(
        self, view: View, names: list[str], expected: int
    ) -> dict[str, list[dict[str, Any]]]:
        """The placed replicas of `names` (`expected` of them, by their records), by
        deployment. Each name's replicas are keyed NAME/INDEX and its placements NAME-INDEX,
        so one range from the least such key to past the greatest holds them all, and those
        of any name that sorts among them: a later name that extends one of these with '-'
        (`app-1/…` sorts before `app/…`). Such names are few, as a rule; for `app` and 10⁵
        names `app-N` they are all. So a range holding more than twice what is expected is
        left, and each name's own keys are read instead, many reads to a transaction."""
        if not names:
            return {}
        wanted = set(names)
        # A name's replicas are NAME/… up to NAME0 ("0" follows "/"), its placements NAME-…
        # up to NAME. ("." follows "-").
        kvs = await self._shared_or_own(
            view,
            (P_REPLICAS + min(n + "/" for n in names), P_REPLICAS + max(n + "0" for n in names)),
            [(f"{P_REPLICAS}{n}/", f"{P_REPLICAS}{n}0") for n in names],
            2 * expected + SLACK,
        )
        replicas = [r for r in map(decode, kvs) if r["deployment"] in wanted]
        ids = {r["id"] for r in replicas}
        kvs = await self._shared_or_own(
            view,
            (P_SCHEDULER + min(n + "-" for n in names), P_SCHEDULER + max(n + "." for n in names)),
            [(P_SCHEDULER + i, "") for i in ids],
            2 * len(ids) + SLACK,
        )
        nodes = {p["replica"]: p["node"] for p in map(decode, kvs) if p["replica"] in ids}
        by_dep: dict[str, list[dict[str, Any]]] = {n: [] for n in names}
        for r in replicas:
            by_dep[r["deployment"]].append({**r, "node": nodes.get(r["id"], "")})
        return by_dep

    async def _shared_or_own(
        self, view: View, shared: tuple[str, str], own: list[tuple[str, str]], most: int
    ) -> list[KV]:
        """The keys of the `shared` range at the view's revision; past `most` of them, the
        keys of each `own` range instead, many reads to a transaction."""
        found: list[KV] = []
        start, end = shared
        listed = self.etcd.iter_range(
            start, end.encode(), view.revision, min(most + 1, FIRST_PAGE), most=most + 1
        )
        async with aclosing(listed):
            async for kv in listed:
                found.append(kv)
                if len(found) > most:
                    groups = await self.etcd.read_many(own, view.revision)
                    return [kv for group in groups for kv in group]
        return found

    async def deployments(self) -> list[dict[str, Any]]:
        """Every deployment with its placed replicas: all the pages, at one revision."""
        page = await self.deployment_page("", PAGE_DEPLOYMENTS)
        deps = page.deployments
        while page.next_after:
            page = await self.deployment_page(page.next_after, PAGE_DEPLOYMENTS, page.revision)
            deps += page.deployments
        return deps


def _check_image(image: str) -> None:
    if not image or len(image) > 255 or any(c.isspace() for c in image):
        raise InvalidArgument(f"invalid image {image!r}")
