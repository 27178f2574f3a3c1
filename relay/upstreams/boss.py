"""``kind: boss`` — BossDB, or another relay: the BossDB dialect upstream.

Metadata is passed through verbatim (and cached for ``metadata_ttl_seconds``; when the
upstream cannot be reached, what is held is served stale, so a laptop relay keeps working
offline over what it has seen). Cutouts are fetched one cuboid at a time on the upstream's own
grid (``cuboid_size`` from its downsample info: 512×512×16 at BossDB), clipped to each level's
bounds, as ``application/blosc``; the decoded length is checked against the box. An upstream
BossDB error comes back with its own status and code, so errors survive a chain.

Credentials: the source's ``token`` is sent as ``Authorization: Token …``. With
``forward_client_token`` each caller's own Authorization goes upstream instead, and the caller's
token becomes part of the metadata cache key here and of the cuboid cache key in ``cutout``.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from ..codecs import DTYPES, decode_blosc
from ..errors import ResourceNotFound, UpstreamError
from ..geometry import Box, Vec3
from ._http import describe, json_body
from .base import (
    BOSS_CUBOID,
    ChannelInfo,
    ChannelRef,
    Level,
    Upstream,
    UpstreamContext,
    token_digest,
)

__all__ = ["BossUpstream"]

log = logging.getLogger(__name__)

_UNREACHABLE = (502, 503, 504)
_METADATA_ENTRIES = 10_000


class BossUpstream(Upstream):
    kind = "boss"
    passthrough = True

    def __init__(self, source: Any, context: UpstreamContext | None = None) -> None:
        super().__init__(source, context)
        self._base: str = source.url.rstrip("/")
        self._where = describe(self._base, "upstream")  # credentials in the URL stay out
        # (path, credential digest) → (expiry, JSON); bounded, since forwarded tokens make
        # one set of entries per caller
        self._metadata: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()

    @property
    def store_identity(self) -> str:
        return self._base

    def authorization(self, caller: str | None) -> str | None:
        if self.source.forward_client_token:
            return caller
        return f"Token {self.source.token}" if self.source.token else None

    def _headers(self, caller: str | None, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        auth = self.authorization(caller)
        if auth:
            headers["Authorization"] = auth
        return headers

    async def boss_json(self, path: str, token: str | None = None) -> Any:
        key = (path, token_digest(self.authorization(token)))
        held = self._metadata.get(key)
        now = time.monotonic()
        if held is not None and held[0] > now:
            return held[1]
        try:
            response = await self.context.http.get(
                f"{self._base}/v1/{path}", self.http_settings, where=self._where,
                headers=self._headers(token, "application/json"),
            )
            body = json_body(response, self._where)
        except UpstreamError as exc:
            if held is not None and exc.status in _UNREACHABLE:
                log.warning("%s: serving held metadata for %s (%s)", self._where, path,
                            exc.message)
                return held[1]
            raise
        self._metadata[key] = (now + self.source.metadata_ttl_seconds, body)
        self._metadata.move_to_end(key)
        while len(self._metadata) > _METADATA_ENTRIES:
            self._metadata.popitem(last=False)
        return body

    async def channel_info(self, ref: ChannelRef, token: str | None = None) -> ChannelInfo:
        c, e, ch = ref.collection, ref.experiment, ref.channel
        channel = await self.boss_json(f"collection/{c}/experiment/{e}/channel/{ch}/", token)
        experiment = await self.boss_json(f"collection/{c}/experiment/{e}/", token)
        frame = await self.boss_json(f"coord/{experiment['coord_frame']}/", token)
        downsample = await self.boss_json(f"downsample/{c}/{e}/{ch}/", token)
        try:
            return _channel_info(channel, experiment, frame, downsample, self.source.cuboid)
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"{self._where} sent unusable metadata for {ref}: {exc}") from exc

    async def read(
        self, ref: ChannelRef, level: int, box: Box, t: int = 0, token: str | None = None
    ) -> np.ndarray | None:
        return (await self.read_encoded(ref, level, box, t, token))[0]

    async def read_encoded(
        self, ref: ChannelRef, level: int, box: Box, t: int = 0, token: str | None = None
    ) -> tuple[np.ndarray | None, bytes | None]:
        # The frame is kept as it came: every hop of a chain would otherwise compress the same
        # voxels again (about 4 ms per 4 MiB cuboid, serially, on a cold read).
        info = await self.channel_info(ref, token)
        if not 0 <= level < len(info.levels):
            raise ResourceNotFound(f"resolution {level} not found")
        # A time range makes the answer 4-D (1, z, y, x): the same bytes as (z, y, x).
        time_part = f"{t}:{t + 1}/" if info.num_time_samples > 1 else ""
        url = (f"{self._base}/v1/cutout/{ref.collection}/{ref.experiment}/{ref.channel}/"
               f"{level}/{box}/{time_part}")
        response = await self.context.http.get(
            url, self.http_settings, where=self._where,
            headers=self._headers(token, "application/blosc"),
        )
        try:
            return decode_blosc(response.content, info.dtype, box.shape_zyx), response.content
        except ValueError as exc:
            raise UpstreamError(f"{self._where} sent a bad cutout for {ref}: {exc}") from exc


def _channel_info(channel: dict[str, Any], experiment: dict[str, Any], frame: dict[str, Any],
                  downsample: dict[str, Any], cuboid: tuple[int, int, int] | None) -> ChannelInfo:
    dtype = DTYPES.get(channel["datatype"])
    if dtype is None:
        raise ValueError(f"datatype {channel['datatype']!r} is not uint8, uint16 or uint64")
    start = Vec3(int(frame["x_start"]), int(frame["y_start"]), int(frame["z_start"]))
    base_voxel = (float(frame["x_voxel_size"]), float(frame["y_voxel_size"]),
                  float(frame["z_voxel_size"]))
    count = int(downsample.get("num_hierarchy_levels") or experiment["num_hierarchy_levels"])
    if channel.get("downsample_status") != "DOWNSAMPLED":
        count = 1  # BossDB holds only resolution 0 until a downsample has run
    levels = []
    for r in range(count):
        key = str(r)
        voxel = tuple(float(v) for v in downsample["voxel_size"][key]) if key in downsample.get(
            "voxel_size", {}) else base_voxel
        if r == 0:
            stop = Vec3(int(frame["x_stop"]), int(frame["y_stop"]), int(frame["z_stop"]))
        else:
            stop = Vec3(*(int(v) for v in downsample["extent"][key]))
        # the level's first voxel: the frame's start scaled by this level's factor per axis
        level_start = Vec3(*(int(s * b // v) for s, b, v in
                             zip(start, base_voxel, voxel, strict=True)))
        grid = cuboid or tuple(downsample.get("cuboid_size", {}).get(key, BOSS_CUBOID))
        levels.append(Level(
            voxel_size=(voxel[0], voxel[1], voxel[2]),
            bounds=Box(level_start, stop),
            cuboid=Vec3(*(int(v) for v in grid)),
            origin=level_start,
        ))
    return ChannelInfo(
        dtype=dtype,
        type="annotation" if channel.get("type") == "annotation" else "image",
        levels=tuple(levels),
        voxel_unit=str(frame.get("voxel_unit") or "nanometers"),
        num_time_samples=max(1, int(experiment.get("num_time_samples") or 1)),
        description=str(channel.get("description") or ""),
    )
