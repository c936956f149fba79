"""The DRA driver's checkpoint: the claims it prepared on this node, one JSON file in its plugin directory.

Written atomically (temporary file, fsync, rename, fsync of the directory) after every change and read at
start, so that a restarted driver answers a repeated NodePrepareResources with the same devices, removes the
right CDI spec at NodeUnprepareResources, and counts each prepared share once when it checks a GPU's room.
A checksum over the content catches a torn or edited file (the kubelet's own checkpoints do the same).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from fracgpu.api.v1beta1 import _decode as d
from fracgpu.api.v1beta1.errors import InvalidDocument

FORMAT_VERSION: Final = 1


@dataclass(frozen=True, slots=True)
class PreparedDevice:
    """One allocated device (or share of one) of a prepared claim, with the limits the container gets."""

    request: str  # the claim's request (without subrequest)
    pool: str
    device: str
    uuid: str
    cores: int  # vgpu-core units, 100 = the whole GPU
    memory: int  # VRAM bytes
    share_id: str = ""
    admin: bool = False  # adminAccess: visible, not counted against the GPU's room

    def to_json(self) -> dict[str, Any]:
        return {"request": self.request, "pool": self.pool, "device": self.device, "uuid": self.uuid,
                "cores": self.cores, "memory": self.memory, "shareID": self.share_id, "admin": self.admin}

    @staticmethod
    def from_json(raw: Any, where: str) -> PreparedDevice:
        o = d.obj(raw, where)
        return PreparedDevice(
            request=d.string(o, "request", where), pool=d.string(o, "pool", where),
            device=d.string(o, "device", where), uuid=d.string(o, "uuid", where),
            cores=d.integer(o, "cores", where), memory=d.integer(o, "memory", where),
            share_id=d.string(o, "shareID", where, default=""), admin=d.boolean(o, "admin", where, default=False))


@dataclass(frozen=True, slots=True)
class PreparedClaim:
    uid: str
    namespace: str
    name: str
    devices: tuple[PreparedDevice, ...] = ()

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"

    def to_json(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "name": self.name, "devices": [x.to_json() for x in self.devices]}


@dataclass(frozen=True, slots=True)
class Checkpoint:
    node: str
    claims: Mapping[str, PreparedClaim] = field(default_factory=dict)  # by claim uid

    def _body(self) -> dict[str, Any]:
        return {"version": FORMAT_VERSION, "node": self.node,
                "claims": {uid: c.to_json() for uid, c in sorted(self.claims.items())}}

    def to_json(self) -> str:
        body = self._body()
        return json.dumps({**body, "checksum": _checksum(body)}, sort_keys=True, indent=1)

    @staticmethod
    def from_json(text: str) -> Checkpoint:
        top = d.versioned(text, "checkpoint", FORMAT_VERSION)
        body = {k: v for k, v in top.items() if k != "checksum"}
        if d.string(top, "checksum", "checkpoint") != _checksum(body):
            raise InvalidDocument("checkpoint.checksum: does not match the content (torn or edited file)")
        claims: dict[str, PreparedClaim] = {}
        for uid, item in d.obj(top.get("claims", {}), "checkpoint.claims").items():
            where = f"checkpoint.claims[{uid}]"
            c = d.obj(item, where)
            devices = tuple(PreparedDevice.from_json(x, f"{where}.devices[{i}]")
                            for i, x in enumerate(d.lst(c.get("devices", []), f"{where}.devices")))
            claims[str(uid)] = PreparedClaim(str(uid), d.string(c, "namespace", where), d.string(c, "name", where),
                                             devices)
        return Checkpoint(node=d.string(top, "node", "checkpoint"), claims=claims)


def _checksum(body: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
