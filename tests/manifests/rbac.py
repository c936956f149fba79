"""RBAC as the API server's authorizer applies it, over the rendered manifests: does service account
X in fracgpu-system hold a rule for this request?"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from fracgpu.api.v1beta1 import names
from tests.manifests.render import Obj, rendered


@dataclass(frozen=True)
class Access:
    """One request as RBAC sees it (the fields of the fake API server's RequestRecord)."""

    verb: str
    group: str
    resource: str
    subresource: str = ""
    namespace: str = ""
    name: str = ""


@dataclass(frozen=True)
class Grant:
    """One rule of a role, with where it applies ("" = every namespace, from a ClusterRoleBinding)."""

    namespace: str
    groups: tuple[str, ...]
    resources: tuple[str, ...]
    verbs: tuple[str, ...]
    names: tuple[str, ...]

    def allows(self, a: Access) -> bool:
        resource = f"{a.resource}/{a.subresource}" if a.subresource else a.resource
        if self.namespace and a.namespace != self.namespace:
            return False
        if not ({a.group, "*"} & set(self.groups) and {resource, "*"} & set(self.resources)
                and {a.verb, "*"} & set(self.verbs)):
            return False
        # resourceNames cannot restrict create, list or watch of a collection (no name yet / many)
        return not self.names or (a.name in self.names and a.verb not in ("create", "list", "watch"))


@functools.cache
def grants(account: str) -> tuple[Grant, ...]:
    return grants_in(account, rendered())


def grants_in(account: str, objs: list[Obj]) -> tuple[Grant, ...]:
    """The account's grants in these objects (e.g. the manifests with a component added)."""

    def of_kind(kind: str) -> list[Obj]:
        return [o for o in objs if o["kind"] == kind]

    roles = {(o["kind"], o["metadata"].get("namespace", ""), o["metadata"]["name"]): o
             for o in of_kind("Role") + of_kind("ClusterRole")}
    out: list[Grant] = []
    for b in of_kind("RoleBinding") + of_kind("ClusterRoleBinding"):
        if not any(s["kind"] == "ServiceAccount" and s["name"] == account
                   and s["namespace"] == names.DEFAULT_NAMESPACE for s in b["subjects"]):
            continue
        ref = b["roleRef"]
        where = b["metadata"].get("namespace", "")
        role: Obj | None = roles.get((ref["kind"], where if ref["kind"] == "Role" else "", ref["name"]))
        if role is None:  # a built-in role (extension-apiserver-authentication-reader)
            continue
        for r in role.get("rules", []):
            out.append(Grant(where, tuple(r.get("apiGroups", [])), tuple(r.get("resources", [])),
                             tuple(r["verbs"]), tuple(r.get("resourceNames", []))))
    return tuple(out)


def authorized(account: str, a: Access, objs: list[Obj] | None = None) -> bool:
    return any(g.allows(a) for g in (grants(account) if objs is None else grants_in(account, objs)))


def granted(account: str, objs: list[Obj] | None = None) -> set[tuple[str, str, str]]:
    """Every (group, resource[/sub], verb) the account's own roles grant."""
    gs = grants(account) if objs is None else grants_in(account, objs)
    return {(grp, res, verb) for g in gs for grp in g.groups for res in g.resources for verb in g.verbs}
