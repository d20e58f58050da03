"""Deployments and their replicas: each replica gets an IP (IPAM) and a node (scheduler)."""

from __future__ import annotations

from collections import Counter
from typing import Any

from jaco.errors import AlreadyExists, Conflict, InvalidArgument, NotFound
from jaco.model import ipam, scheduler
from jaco.model.engine import Change, Engine, View
from jaco.model.keys import (
    K_CLUSTER,
    P_ALIVE,
    P_DEPLOYMENTS,
    P_IPAM,
    P_NODES,
    P_REPLICAS,
    P_ROUTES,
    P_SCHEDULER,
    now,
    replica_id,
)
from jaco.model.names import check_name, check_replicas


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
        taken = [a["ip"] for a in await view.list(P_IPAM)]
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
        """One deployment with its placed replicas, read at one revision from its own keys:
        Deploy and Scale answer with it, and the whole tables cost seconds per write at 10⁵
        deployments."""
        view = await self.view()
        d = await view.get(P_DEPLOYMENTS + name)
        if d is None:
            return None
        placed = []
        for replica in await view.list(f"{P_REPLICAS}{name}/"):
            placement = await view.get(P_SCHEDULER + replica["id"])
            placed.append({**replica, "node": placement["node"] if placement else ""})
        return {**d, "placed": placed}

    async def deployments(self, view: View | None = None) -> list[dict[str, Any]]:
        view = view or await self.view()
        placements = {p["replica"]: p["node"] for p in await view.list(P_SCHEDULER)}
        by_dep: dict[str, list[dict[str, Any]]] = {}
        for replica in await view.list(P_REPLICAS):
            node = placements.get(replica["id"], "")
            by_dep.setdefault(replica["deployment"], []).append({**replica, "node": node})
        deps = await view.list(P_DEPLOYMENTS)
        return [{**d, "placed": by_dep.get(d["name"], [])} for d in deps]


def _check_image(image: str) -> None:
    if not image or len(image) > 255 or any(c.isspace() for c in image):
        raise InvalidArgument(f"invalid image {image!r}")
