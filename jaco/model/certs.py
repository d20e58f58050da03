"""Certificates issued by the cluster CA on an operator's request (the keys are not kept)."""

from __future__ import annotations

from typing import Any

from jaco.errors import InvalidArgument
from jaco.model import pki
from jaco.model.engine import Change, Engine, View
from jaco.model.keys import P_ISSUED, now


class Certs(Engine):
    async def issue_cert(
        self, actor: str, common_name: str, dns_names: list[str], valid_days: int
    ) -> tuple[dict[str, Any], pki.KeyPair]:
        if not common_name or len(common_name) > 64:
            raise InvalidArgument("a certificate needs a common name of 1-64 characters")
        if not 1 <= valid_days <= pki.NODE_VALID_DAYS:
            raise InvalidArgument(f"valid days must be 1-{pki.NODE_VALID_DAYS}")
        pair = pki.issue(await self.ca(), common_name, dns_names or [common_name], valid_days)
        info: dict[str, Any] = {
            **pki.cert_summary(pair.cert_pem),
            "issued_at": now(),
            "cert_pem": pair.cert_pem.decode(),
        }

        async def fn(view: View, change: Change) -> None:
            change.put(P_ISSUED + info["serial"], info)
            change.audit("CERT_ISSUED", serial=info["serial"], common_name=common_name)

        await self.mutate(actor, fn)
        return info, pair

    async def certs(self) -> list[dict[str, Any]]:
        return await (await self.view()).list(P_ISSUED)
