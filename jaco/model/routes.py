"""HTTP routes to deployments."""

from __future__ import annotations

from typing import Any

from jaco.errors import AlreadyExists, InvalidArgument, NotFound
from jaco.model.engine import Change, Engine, View
from jaco.model.keys import P_DEPLOYMENTS, P_ROUTES, now
from jaco.model.names import check_host, check_name


class Routes(Engine):
    async def add_route(
        self, actor: str, name: str, host: str, path: str, deployment: str, port: int
    ) -> dict[str, Any]:
        check_name("route", name)
        host = check_host(host, "route host")
        if not path.startswith("/"):
            raise InvalidArgument(f"invalid route path {path!r}: it must start with '/'")
        if not 1 <= port <= 65535:
            raise InvalidArgument(f"invalid port {port}: use 1-65535")
        route = {
            "name": name,
            "host": host,
            "path": path,
            "deployment": deployment,
            "port": port,
            "created_at": now(),
        }

        async def fn(view: View, change: Change) -> dict[str, Any]:
            if await view.get(P_DEPLOYMENTS + deployment) is None:
                raise NotFound(f"no deployment named {deployment}")
            if await view.get(P_ROUTES + name) is not None:
                raise AlreadyExists(f"route {name} already exists")
            for other in await view.list(P_ROUTES):
                if (other["host"], other["path"]) == (host, path):
                    raise AlreadyExists(f"route {other['name']} already serves {host}{path}")
            change.put(P_ROUTES + name, route)
            change.audit("ROUTE_ADDED", name=name, host=host, path=path, deployment=deployment)
            return route

        return await self.mutate(actor, fn)

    async def remove_route(self, actor: str, name: str) -> None:
        async def fn(view: View, change: Change) -> None:
            if await view.get(P_ROUTES + name) is None:
                raise NotFound(f"no route named {name}")
            change.delete(P_ROUTES + name)
            change.audit("ROUTE_REMOVED", name=name)

        await self.mutate(actor, fn)

    async def routes(self) -> list[dict[str, Any]]:
        return await (await self.view()).list(P_ROUTES)
