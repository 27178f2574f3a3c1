"""The registry of upstream kinds: the built-ins, imported on first use (so an optional
dependency is only needed by those who use that kind), merged with the entry-point group
``relay.upstreams``. A second registration of a name is refused.
"""

from __future__ import annotations

import importlib
import logging
from importlib.metadata import entry_points
from typing import TYPE_CHECKING, Any, ClassVar

from pydantic import ValidationError

if TYPE_CHECKING:
    from ..model import SourceSettings
    from .base import Upstream, UpstreamContext

__all__ = ["Registry", "registry"]

log = logging.getLogger(__name__)


class Registry:
    """Upstream kinds by name: built-ins plus the ``relay.upstreams`` entry-point group."""

    BUILTINS: ClassVar[dict[str, str]] = {
        "zarr": "relay.upstreams.zarr:ZarrUpstream",
        "precomputed": "relay.upstreams.precomputed:PrecomputedUpstream",
        "boss": "relay.upstreams.boss:BossUpstream",
        "dvid": "relay.upstreams.dvid:DvidUpstream",
    }
    GROUP: ClassVar[str] = "relay.upstreams"

    def __init__(self) -> None:
        self._targets: dict[str, str | type[Upstream]] = dict(self.BUILTINS)
        self._entry_points_loaded = False

    def register(self, name: str, target: str | type[Upstream], *, replace: bool = False) -> None:
        """Add a kind; ``target`` is a class or a ``"module:Class"`` path."""
        self._load_entry_points()
        self._add(name, target, replace=replace)

    def _add(self, name: str, target: str | type[Upstream], *, replace: bool) -> None:
        if name in self._targets and not replace:
            raise ValueError(f"upstream kind {name!r} is already registered")
        self._targets[name] = target

    def _load_entry_points(self) -> None:
        if self._entry_points_loaded:
            return
        self._entry_points_loaded = True
        for ep in entry_points(group=self.GROUP):
            try:
                self._add(ep.name, ep.value, replace=False)
            except ValueError:
                log.warning(
                    "ignoring entry point %s = %s: kind %r is already registered",
                    ep.name, ep.value, ep.name,
                )

    def kinds(self) -> list[str]:
        self._load_entry_points()
        return sorted(self._targets)

    def get(self, name: str) -> type[Upstream]:
        self._load_entry_points()
        target = self._targets[name]
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            module = importlib.import_module(module_name)
            target = getattr(module, attr)
            assert isinstance(target, type) and hasattr(target, "channel_info"), target
            self._targets[name] = target
        return target

    def create(self, source: SourceSettings, context: UpstreamContext | None = None) -> Upstream:
        return self.get(source.kind)(source, context)

    def problem(self, kind: str, options: dict[str, Any]) -> str | None:
        """What is wrong with a source of ``kind`` with these kind ``options``, as "key:
        message", or None: an unknown kind, or an option the kind's ``Options`` model refuses
        (an unknown key, a bad value, a missing required one)."""
        kinds = self.kinds()
        if kind not in kinds:
            return f"kind: unknown upstream kind {kind!r} (known: {', '.join(kinds)})"
        model = self.get(kind).Options
        try:
            model.model_validate(options)
        except ValidationError as exc:
            error = exc.errors()[0]
            key = ".".join(str(part) for part in error["loc"]) or "kind"
            if error["type"] == "extra_forbidden":
                known = ", ".join(sorted(model.model_fields)) or "none"
                return (f"{key}: unknown key for kind {kind} (its own options: {known}; "
                        "or a key every source has, misspelt)")
            return f"{key}: {str(error['msg']).removeprefix('Value error, ')}"
        return None


registry = Registry()
