"""The resources form of a pipeline file: several endpoints over one client and one target.

Each resource is checked and built as a document of the simple form: the
file's top-level `source` and `target` with the resource's own laid over
them key by key (`params` and `headers` merged name by name). A `View` holds
that document and the way back from a place in it to where the file says it
(the resource's own key, or the default it inherited), so that every check
of the simple form reports at the right line, once.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterator
from dataclasses import dataclass
from typing import Any

from runner.config.yamlpos import KeyPath

MERGED_BY_NAME = ("params", "headers")
# the run's one HTTP client has one auth, one rate limit, one set of timeouts and retries
SHARED_SOURCE_KEYS = ("auth", "rate_limit", "timeout", "retry", "max_response_bytes")
FROM_PARENT_URL = "http://from-parent.invalid/"  # a `from_parent` child makes no request
TABLE_TARGETS = ("sqlite", "postgres")

Add = Callable[..., None]  # _Report.add: (path, message, *, key=False, severity="error")


def in_use(data: Any) -> bool:
    return isinstance(data, dict) and "resources" in data


@dataclass(frozen=True)
class View:
    """One resource as a simple-form document, and where each of its places is in the file."""

    name: str
    data: dict[str, Any]
    own: dict[str, Any]  # the resource as the file writes it
    top: dict[str, Any]  # the file

    @property
    def from_parent(self) -> bool:
        return "from_parent" in self.own

    def where(self, path: KeyPath) -> KeyPath:
        """The file's key path for `path` of the view's document."""
        base: KeyPath = ("resources", self.name)
        if not path:
            return base
        head = path[0]
        if head == "mapping":
            return (*base, *path)
        if head not in ("source", "target"):
            return path
        if head == "source" and self.from_parent:
            return (*base, "from_parent")
        own = self.own.get(head)
        if len(path) == 1:
            return (*base, head) if isinstance(own, dict) else ((head,) if head in self.top else base)
        key = path[1]
        if isinstance(own, dict) and key in own:
            inner = own[key]
            if key in MERGED_BY_NAME and len(path) > 2 and isinstance(inner, dict) and path[2] not in inner:
                return path  # a default's name, not overridden
            return (*base, *path)
        top = self.top.get(head)
        if isinstance(top, dict) and key in top:
            return path
        return (*base, head) if isinstance(own, dict) else base


class Unchecked:
    """The file's unchecked places (an unset variable...), asked with a view's paths."""

    def __init__(self, places: Container[KeyPath], view: View) -> None:
        self.places, self.view = places, view

    def __contains__(self, path: object) -> bool:
        return isinstance(path, tuple) and self.view.where(path) in self.places


def views(data: dict[str, Any]) -> Iterator[View]:
    """Every well-formed resource, in file order, as a simple-form document."""
    resources = data.get("resources")
    if not isinstance(resources, dict):
        return
    common = {k: v for k, v in data.items() if k not in ("resources", "source", "target", "mapping")}
    for name, own in resources.items():
        if not isinstance(name, str) or not isinstance(own, dict):
            continue
        doc = dict(common)
        from_parent = "from_parent" in own
        doc["source"] = {"url": FROM_PARENT_URL} if from_parent else _lay(data.get("source"), own.get("source"))
        if "mapping" in own:
            doc["mapping"] = own["mapping"]
        target = _lay(data.get("target"), own.get("target"))
        if isinstance(target, dict) and target.get("type") in TABLE_TARGETS:
            target.setdefault("table", name)
        doc["target"] = target
        yield View(name, doc, own, data)


def _lay(base: Any, over: Any) -> Any:
    """`over` laid over `base` key by key; `params` and `headers` merge name by name; a
    resource's `url` (or `base_url`/`path`) replaces the other way of giving the URL."""
    if not isinstance(over, dict):
        return dict(base) if isinstance(base, dict) else base
    if not isinstance(base, dict):
        return dict(over)
    laid = dict(base)
    if "url" in over:
        laid.pop("base_url", None)
        laid.pop("path", None)
    elif "base_url" in over or "path" in over:
        laid.pop("url", None)
    for key, value in over.items():
        if key in MERGED_BY_NAME and isinstance(value, dict) and isinstance(laid.get(key), dict):
            laid[key] = {**laid[key], **value}
        else:
            laid[key] = value
    return laid


def form_problems(data: dict[str, Any], add: Add) -> None:
    """What only the resources form can get wrong: both forms at once, a name, a parent that
    is missing or comes later, a key the shared client owns, an incremental child."""
    if "mapping" in data:
        add(("mapping",), "a file has either 'mapping' (one endpoint) or 'resources' (several), not both; "
            "move this mapping into a resource", key=True)
    resources = data.get("resources")
    if not isinstance(resources, dict):
        return
    if not resources:
        add(("resources",), "'resources' is empty; give at least one resource")
    seen: list[str] = []
    for name, own in resources.items():
        if isinstance(own, dict):
            _resource_problems(name, own, seen, add)
        seen.append(str(name))


def _resource_problems(name: str, own: dict[str, Any], earlier: list[str], add: Add) -> None:
    base: KeyPath = ("resources", name)
    parent = own.get("parent")
    parent_name = parent.get("resource") if isinstance(parent, dict) else parent
    if "from_parent" in own and "source" in own:
        add((*base, "from_parent"), "a resource has either 'source' (its own requests) or 'from_parent' "
            "(a list inside the parent record), not both", key=True)
    if "from_parent" in own and parent is None:
        add((*base, "from_parent"), "'from_parent' takes records from the parent record: add 'parent'", key=True)
    if isinstance(parent_name, str):
        if parent_name == name:
            add((*base, "parent"), f"resource {name!r} cannot be its own parent")
        elif parent_name not in earlier:
            hint = "; a parent must come before its children in the file" if parent_name else ""
            add((*base, "parent"), f"unknown parent resource {parent_name!r}{hint}"
                f"{'' if not earlier else '; resources before this one: ' + ', '.join(earlier)}")
    source = own.get("source")
    if isinstance(source, dict):
        for key in (k for k in SHARED_SOURCE_KEYS if k in source):
            add((*base, "source", key), f"'{key}' is shared by every resource (one HTTP client: one connection "
                "pool, one rate limit, one token); set it in the top-level source", key=True)


def view_problems(view: View, add: Add) -> None:
    """A child resource's source (its own or the defaults') may not be incremental."""
    source = view.data.get("source")
    if view.own.get("parent") is not None and isinstance(source, dict) and "incremental" in source:
        add(view.where(("source", "incremental")), f"resource {view.name!r} is a child, and a child resource "
            "cannot be incremental in this version: make its parent incremental, or use "
            "'parent: {resource: ..., changed_only: true}'", key=True)
