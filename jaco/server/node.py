"""The running state of one jacod: its etcd member, its store, and its background duties.

It keeps the node's liveness key fresh, promotes caught-up learners (when its member leads)
and, on the first start after `jaco restore`, makes this node the only member and records
RESTORE_COMPLETED. The API (jaco.server.service) serves from it; jaco.server.api runs both
(jaco.server.daemon, the entry point, spawns its etcd member first).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil

from jaco.errors import JacoError
from jaco.model.etcd import Etcd, op_put
from jaco.model.etcd_errors import EtcdError
from jaco.model.keys import P_ALIVE, encode, now
from jaco.model.store import Store
from jaco.node.config import DataDir, NodeConfig
from jaco.node.etcd_member import EtcdMember

log = logging.getLogger("jacod")
ALIVE_TTL = 5
TICK = 1.0


class Node:
    """The running state of one jacod."""

    def __init__(self, data: DataDir, config: NodeConfig, member: EtcdMember) -> None:
        """`member`: the node's etcd member, spawned already or not (start() spawns it)."""
        self.data = data
        self.config = config
        self.member = member
        self.is_learner = True
        self._etcd: Etcd | None = None
        self._store: Store | None = None
        self._lease: int | None = None
        self.backup_lock = asyncio.Lock()
        # Membership changes through this jacod, one at a time: raft drops a conf change
        # proposed while another is pending, and etcd then waits for it until its deadline.
        self.membership_lock = asyncio.Lock()
        self.exit_code = 0

    @property
    def etcd(self) -> Etcd:
        assert self._etcd is not None
        return self._etcd

    @property
    def store(self) -> Store:
        assert self._store is not None
        return self._store

    async def start(self) -> None:
        # A jacod before format 3 killed mid-backup left its snapshot copy (with the CA key).
        shutil.rmtree(self.data.backup_dir, ignore_errors=True)
        self._etcd = await self.member.start()
        self._store = Store(self._etcd)
        await self._complete_restore()

    def duties(self, stop: asyncio.Event) -> list[asyncio.Task[None]]:
        return [
            asyncio.create_task(self._heartbeat(), name="heartbeat"),
            asyncio.create_task(self._promote_learners(), name="promoter"),
            asyncio.create_task(self._watch_etcd(stop), name="etcd-watchdog"),
        ]

    async def stop(self) -> None:
        if self._lease is not None:
            # Tell the others at once that this node is going (bounded: quorum may be gone).
            with contextlib.suppress(JacoError, TimeoutError):
                await asyncio.wait_for(self.etcd.lease_revoke(self._lease), 2)
        await self.member.stop()

    async def _complete_restore(self) -> None:
        """After `jaco restore`: become the only member and record RESTORE_COMPLETED, once."""
        if not self.data.restore_marker.exists():
            return
        marker = json.loads(self.data.restore_marker.read_text())
        status = await self.etcd.status()
        node = {
            "name": self.config.name,
            "api_address": self.config.api_address,
            "peer_url": self.config.peer_url,
            "member_id": f"{status.member_id:x}",
            "voter": True,
            "joined_at": now(),
        }
        if await self.store.complete_restore(node, marker):
            log.info("restore from index %s completed", marker["snapshot_index"])
        self.data.restore_marker.unlink()

    async def _watch_etcd(self, stop: asyncio.Event) -> None:
        """A jacod without its etcd is useless: exit (and let systemd restart us)."""
        process = self.member.process
        assert process is not None
        code = await process.wait()
        if not stop.is_set():
            log.error("etcd exited unexpectedly with code %s; see %s", code, self.data.etcd_log)
            self.exit_code = 1
            stop.set()

    async def _heartbeat(self) -> None:
        """Publish this node's liveness and raft position under a short lease."""
        key = P_ALIVE + self.config.name
        while True:
            try:
                status = await self.etcd.status()
                self.is_learner = status.is_learner
                if not status.is_learner:
                    if self._lease is None or not await self.etcd.lease_keepalive(self._lease):
                        self._lease = await self.etcd.lease_grant(ALIVE_TTL)
                    beat = {
                        "name": self.config.name,
                        "address": self.config.api_address,
                        "raft_index": status.raft_index,
                        "raft_term": status.raft_term,
                        "member_id": f"{status.member_id:x}",
                        "leader_id": f"{status.leader_id:x}",
                        "at": now(),
                    }
                    await self.etcd.txn([], [op_put(key, encode(beat), self._lease)])
            except JacoError as exc:
                log.warning("heartbeat: %s", exc.message)
            await asyncio.sleep(TICK)

    async def _promote_learners(self) -> None:
        """On the leader: promote learners that caught up, and mark promoted nodes as voters."""
        actor = f"node:{self.config.name}"
        while True:
            await asyncio.sleep(TICK)
            try:
                status = await self.etcd.status()
                if status.leader_id != status.member_id:
                    continue
                voters = set()
                for member in await self.etcd.members():
                    if member.is_learner:
                        with contextlib.suppress(EtcdError):  # not caught up yet
                            async with self.membership_lock:
                                await self.etcd.promote(member.id)
                            log.info("promoted etcd learner %x to voter", member.id)
                            voters.add(member.id)
                    else:
                        voters.add(member.id)
                for node in await self.store.nodes():
                    mid = int(node["member_id"], 16) if node.get("member_id") else 0
                    if not node.get("voter") and mid in voters:
                        await self.store.update_node(
                            actor, node["name"], "NODE_PROMOTED", voter=True
                        )
            except JacoError as exc:
                log.warning("promoter: %s", exc.message)
