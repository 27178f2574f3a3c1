"""What every dialect's handlers share: name checks, the caller's credential, channel lookup."""

from __future__ import annotations

import re

from starlette.requests import Request

from ..catalog import Catalog, Channel
from ..cutout import Cutout
from ..errors import NotFound, ResourceNotFound, Unauthorized
from ..model import NAME_PATTERN, ChannelRef, show
from .middleware import listed, presented_token

__all__ = [
    "caller_token",
    "catalog_of",
    "channel_for",
    "check_names",
    "check_write_token",
    "cutout_headers",
    "segmentation_for",
    "show",
]

_NAME = re.compile(NAME_PATTERN)


def catalog_of(request: Request) -> Catalog:
    catalog: Catalog = request.app.state.catalog
    return catalog


def caller_token(request: Request) -> str | None:
    """The caller's Authorization header value, as a forwarding source sends it upstream."""
    return request.headers.get("authorization")


def cutout_headers(request: Request, cutout: Cutout) -> dict[str, str]:
    """What a data response says of where its voxels came from: the outcome, for the access
    metrics and the ``X-Cache`` header (``relay.api.middleware``), and RFC 9111's marks for a
    response built partly from cuboids served stale-if-error."""
    request.state.outcome = cutout.outcome
    if cutout.stale_age is None:
        return {}
    return {"Warning": '110 relay "Response is Stale"', "Age": str(int(cutout.stale_age))}


def check_names(*pairs: tuple[str, str]) -> None:
    """A name that cannot exist is a 404, like any unknown name (and never reaches a store)."""
    for what, name in pairs:
        if not _NAME.fullmatch(name):
            raise ResourceNotFound(f"{what} {show(name)} not found")


async def channel_for(request: Request, collection: str, experiment: str,
                      channel: str) -> Channel:
    check_names(("Collection", collection), ("Experiment", experiment), ("Channel", channel))
    return await catalog_of(request).channel(ChannelRef(collection, experiment, channel),
                                             caller_token(request))


async def segmentation_for(request: Request, collection: str, experiment: str,
                           channel: str) -> Channel:
    """``channel_for``, for routes only annotation channels have (meshes)."""
    chan = await channel_for(request, collection, experiment, channel)
    if chan.info.type != "annotation":
        raise NotFound(f"Channel {show(channel)} is an image: only annotation channels have "
                       "meshes")
    return chan


def check_write_token(request: Request) -> None:
    """401 unless the caller presents one of ``server.write_tokens`` (when there are any)."""
    write_tokens = request.app.state.settings.server.write_tokens
    if write_tokens:
        presented = presented_token(request.headers.get("authorization"))
        if presented is None or not listed(presented, [t.encode() for t in write_tokens]):
            raise Unauthorized("Writes to this relay need 'Authorization: Token <token>' with "
                               "one of its server.write_tokens")
