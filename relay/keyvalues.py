"""BossDB's metadata service: string key/values on a collection, an experiment or a channel
(``/v1/meta/…``; intern's ``list/create/get/update/delete_metadata``).

Where a BossDB-speaking source (BossDB, another relay) claims the names, every call goes to it:
a GET is cached for the source's metadata TTL like the rest of its metadata, a write is passed
on uncached and forgets what was held of that resource. Otherwise the relay keeps the
key/values itself, in its durable state (``relay.state``): they survive restarts of the relay
and of Redis, and every relay of a fleet that shares ``server.state_dir`` sees the same ones,
as does every relay of a chain in front of this one (they pass the calls here).

BossDB's answers and errors: ``{"keys": [...]}``, ``{"key": k, "value": v}``, 201 on create,
200 on update, 204 on delete; a key missing (or already there, for a create) is 400/1003. A write
needs a write token (``server.write_tokens``, checked by the route) and a ``writable`` source
claiming the names: metadata is kept for what the relay may change.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

from . import dialect
from .catalog import Catalog
from .errors import InvalidPostArgument, MethodNotAllowed, ResourceNotFound
from .metadata import BossMetadata
from .model import ChannelRef, is_name, show
from .state import DurableState

__all__ = ["MAX_KEY", "MAX_VALUE", "KeyValues"]

#: BossDB keeps keys and values in a database column: bounded here too
MAX_KEY = 255
MAX_VALUE = 64 * 1024

_STATUS = {"GET": 200, "POST": 201, "PUT": 200, "DELETE": 204}


class KeyValues:
    def __init__(self, catalog: Catalog, metadata: BossMetadata, state: DurableState) -> None:
        self.catalog = catalog
        self.metadata = metadata
        self.state = state

    async def _exists(self, names: tuple[str, ...], token: str | None) -> None:
        """404/4000 unless the resource is served (as its own GET would answer)."""
        for what, name in zip(("Collection", "Experiment", "Channel"), names, strict=False):
            if not is_name(name):
                raise ResourceNotFound(f"{what} {show(name)} not found")
        if len(names) == 3:
            await self.catalog.channel(ChannelRef(*names), token)
        elif len(names) == 2:
            await self.metadata.experiment(*names, token)
        else:
            await self.metadata.collection(names[0], token)

    async def call(self, method: str, names: tuple[str, ...], key: str | None,
                   value: str | None, token: str | None) -> tuple[int, Any]:
        """The status and JSON (None: no body) of ``method`` on ``names``' key/values."""
        await self._exists(names, token)
        if key is not None and not 0 < len(key) <= MAX_KEY:
            raise InvalidPostArgument(f"A metadata key is 1 to {MAX_KEY} characters")
        if value is not None and len(value) > MAX_VALUE:
            raise InvalidPostArgument(f"A metadata value is at most {MAX_VALUE} characters")
        if method != "GET" and key is None:
            raise InvalidPostArgument("Missing the 'key' query argument")
        if method in ("POST", "PUT") and value is None:
            raise InvalidPostArgument("Missing the 'value' query argument")
        claimed = self.catalog.claim(*names)
        assert claimed is not None  # _exists found it
        source, upstream = claimed
        if method != "GET" and not source.writable:
            raise MethodNotAllowed(
                f"{'/'.join(names)} is read-only on this relay: its metadata takes writes where "
                "its source is writable: true (docs/objects.md)")
        speaker = self.catalog.speaks_boss(upstream)
        if speaker is not None:
            query = urlencode({k: v for k, v in (("key", key), ("value", value))
                               if v is not None})
            path = dialect.meta(names, query)
            if method == "GET":
                return 200, await speaker.boss_json(path, token)
            return _STATUS[method], await speaker.boss_call(method, path, token)
        resource = "/".join(names)
        if method == "GET":
            if key is None:
                return 200, {"keys": await self.state.keys(resource)}
            return 200, {"key": key, "value": await self.state.value(resource, key)}
        assert key is not None
        if method == "POST":
            assert value is not None
            await self.state.create(resource, key, value)
        elif method == "PUT":
            assert value is not None
            await self.state.update(resource, key, value)
        else:
            await self.state.delete(resource, key)
        return _STATUS[method], None
