"""Paged lists (client-go's tools/pager): one LIST of a resource, ``page_size`` items per request,
following ``metadata.continue`` until the server says there is no more.

Every page of one list is a view of the same resourceVersion (the server's continue token pins it),
so ``Page.resource_version`` is the list's, fit to start a watch from.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final

from fracgpu.kube import objects
from fracgpu.kube.client import Transport
from fracgpu.kube.objects import Obj
from fracgpu.kube.resources import Resource

__all__ = ["PAGE_SIZE", "Page", "list_all", "pages"]

PAGE_SIZE: Final = 500


@dataclass(frozen=True, slots=True)
class Page:
    items: list[Obj]  # each with apiVersion/kind filled in (a List's items carry neither)
    resource_version: str  # the list's resourceVersion


def pages(transport: Transport, resource: Resource, *, namespace: str | None = None,
          label_selector: str | None = None, field_selector: str | None = None,
          page_size: int = PAGE_SIZE) -> Iterator[Page]:
    """The pages of one list, each fetched when the previous one has been consumed."""
    token: str | None = None
    while True:
        answer = transport.request("GET", resource.path(namespace), query={
            "labelSelector": label_selector, "fieldSelector": field_selector, "limit": page_size,
            "continue": token})
        meta = objects.meta(answer)
        items = answer.get("items") or []
        for item in items:
            item.setdefault("apiVersion", resource.api_version)
            item.setdefault("kind", resource.kind)
        yield Page(items, str(meta.get("resourceVersion") or ""))
        token = meta.get("continue") or None
        if not token:
            return


def list_all(transport: Transport, resource: Resource, *, namespace: str | None = None,
             label_selector: str | None = None, field_selector: str | None = None,
             page_size: int = PAGE_SIZE) -> list[Obj]:
    """Every item of the list."""
    return [item for page in pages(transport, resource, namespace=namespace, label_selector=label_selector,
                                   field_selector=field_selector, page_size=page_size) for item in page.items]
