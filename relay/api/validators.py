"""HTTP caching of data responses for browsers and CDNs (RFC 9110 §8.8, RFC 9111).

A cutout or chunk is a version of its cuboids: its strong ``ETag`` is a digest of what was
asked (path, query, representation) and of when each cuboid it is made of was read upstream,
which changes whenever any of them is read again (a refresh, an expired TTL). So a conditional
request is answered 304 once the cuboids are known, before anything is encoded.

``Cache-Control`` follows the source: a source whose data never changes (no ``ttl_seconds``,
not ``writable``) a year and ``immutable``; anything else ``no-cache``, so a browser or CDN
asks again each time and gets a 304 while the ETag holds: a ``writable`` source's voxels change
with the next write (a year's ``immutable`` would keep the old ones in every browser that saw
them), and a ``ttl_seconds`` source's when its store does, or when a client refreshes them
(``access-mode=raw``). An uncached source or a stale-if-error answer is ``no-cache`` too.
A response that depends on the caller's credential (a source that forwards each caller's
token, or a relay with ``server.tokens``) is ``private``, so no shared cache keeps it, and
varies on ``Authorization``.
"""

from __future__ import annotations

import hashlib
import struct

from starlette.requests import Request
from starlette.responses import Response

from ..catalog import Channel
from ..cutout import Cutout

__all__ = ["data_headers", "not_modified"]

#: a year: what "never changes" is told to a cache
_IMMUTABLE = 365 * 24 * 3600


def data_headers(request: Request, channel: Channel, cutout: Cutout, representation: str,
                 vary: tuple[str, ...] = ()) -> dict[str, str]:
    """``ETag``, ``Cache-Control`` and ``Vary`` for a data response of ``cutout`` in
    ``representation`` (its media type and encoding)."""
    digest = hashlib.blake2b(digest_size=16)
    # the path and query as sent (not ``request.url``, which builds a whole URL per request)
    scope = request.scope
    digest.update(f"{scope['path']}?".encode())
    digest.update(scope["query_string"])
    digest.update(f"|{representation}".encode())
    digest.update(struct.pack(f"<{len(cutout.fetched)}d", *cutout.fetched))
    source = channel.source
    private = channel.upstream.partitioned or bool(request.app.state.settings.server.tokens)
    immutable = (source.cache and source.ttl_seconds is None and not source.writable
                 and cutout.stale_age is None and cutout.fetched)
    freshness = f"max-age={_IMMUTABLE}, immutable" if immutable else "no-cache"
    varies = [*vary, "Authorization"] if private else list(vary)
    headers = {"ETag": f'"{digest.hexdigest()}"',
               "Cache-Control": f"{'private' if private else 'public'}, {freshness}"}
    if varies:
        headers["Vary"] = ", ".join(varies)
    return headers


def not_modified(request: Request, headers: dict[str, str]) -> Response | None:
    """A 304 when the request's ``If-None-Match`` names this ``ETag`` (weakly compared, as
    RFC 9110 says for If-None-Match), else None."""
    given = request.headers.get("if-none-match")
    if given is None:
        return None
    tags = {tag.strip().removeprefix("W/") for tag in given.split(",")}
    if "*" in tags or headers["ETag"] in tags:
        return Response(status_code=304, headers=headers)
    return None
