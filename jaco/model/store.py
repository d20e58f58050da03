"""The cluster state model (the "raft FSM"): every record jaco keeps, and every mutation.

`Store` composes the engine (jaco.model.engine: one guarded etcd transaction per mutation,
with its audit events) and the rules of each kind of record, one module each.
"""

from __future__ import annotations

from jaco.model.certs import Certs
from jaco.model.deployments import Deployments
from jaco.model.membership import Membership
from jaco.model.routes import Routes


class Store(Deployments, Routes, Certs, Membership):
    """Every read and mutation of the cluster state, over one etcd client."""
