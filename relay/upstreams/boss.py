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
import re
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from .. import dialect
from ..codecs import DTYPES, MediaType, decode_blosc, encode
from ..errors import UpstreamError
from ..forwarding import FrameSink
from ..geometry import Box, Vec3
from ..model import (
    BOSS_CUBOID,
    NAME_PATTERN,
    ChannelInfo,
    ChannelRef,
    Level,
    checked_info,
    default_cuboid,
    token_digest,
)
from ..offload import offload
from .base import NoOptions, Upstream, UpstreamContext
from .http import describe, json_body

__all__ = ["BossUpstream"]

log = logging.getLogger(__name__)

_UNREACHABLE = (502, 503, 504)
_METADATA_ENTRIES = 10_000
#: What a Blosc1 frame may add to the voxels it holds (16 bytes), generously.
BLOSC_SLACK = 64 * 1024
#: An upstream grid smaller than this (voxels) is read in multiples of itself.
_MIN_CUBOID_VOXELS = 32**3
_NAME = re.compile(NAME_PATTERN)


class BossOptions(NoOptions):
    #: the credential sent upstream as ``Authorization: Token …``
    token: str | None = None
    #: send each caller's own Authorization upstream instead of ``token``; cached entries are
    #: then partitioned by a hash of it
    forward_client_token: bool = False
    secret = frozenset({"token"})


class BossUpstream(Upstream):
    kind = "boss"
    writes = True
    Options = BossOptions
    options: BossOptions

    def __init__(self, source: Any, context: UpstreamContext | None = None) -> None:
        super().__init__(source, context)
        self._base: str = source.url.rstrip("/")
        self._where = describe(self._base, "upstream")  # credentials in the URL stay out
        # (path, credential digest) → (expiry, JSON); bounded, since forwarded tokens make
        # one set of entries per caller
        self._metadata: OrderedDict[tuple[str, str], tuple[float, Any]] = OrderedDict()
        self._offline: set[str] = set()  # paths answered from the memo
        # ref → (the metadata bodies it was parsed from, the channel info)
        self._infos: dict[ChannelRef, tuple[tuple[Any, ...], ChannelInfo]] = {}

    @property
    def store_identity(self) -> str:
        return self._base

    def authorization(self, caller: str | None) -> str | None:
        if self.options.forward_client_token:
            return caller
        return f"Token {self.options.token}" if self.options.token else None

    @property
    def partitioned(self) -> bool:
        return self.options.forward_client_token

    def _headers(self, caller: str | None, accept: str) -> dict[str, str]:
        headers = {"Accept": accept}
        auth = self.authorization(caller)
        if auth:
            headers["Authorization"] = auth
        return headers

    async def boss_json(self, path: str, token: str | None = None) -> Any:
        credential = token_digest(self.authorization(token))
        key = (path, credential)
        held = self._metadata.get(key)
        now = time.monotonic()
        if held is not None and held[0] > now:
            return held[1]
        memo = self.context.memo
        memo_key = f"{self.memo_prefix}/boss/{credential}/{path}"
        try:
            response = await self.context.http.get(
                f"{self._base}/v1/{path}", self.http_settings, where=self._where,
                headers=self._headers(token, "application/json"),
            )
            body = json_body(response, self._where)
        except UpstreamError as exc:
            if exc.status not in _UNREACHABLE:
                raise
            if held is not None:
                log.warning("%s: serving held metadata for %s (%s)", self._where, path,
                            exc.message)
                return held[1]
            # what the upstream said before (this process, or one before a restart)
            remembered = await memo.recall(memo_key) if memo is not None else None
            if remembered is None:
                raise
            if path not in self._offline:  # once per path, not once per request
                self._offline.add(path)
                log.warning("%s: serving remembered metadata for %s (%s)", self._where, path,
                            exc.message)
            return remembered
        if memo is not None:
            memo.remember(memo_key, body)
            self._offline.discard(path)
        self._metadata[key] = (now + self.source.metadata_ttl_seconds, body)
        self._metadata.move_to_end(key)
        while len(self._metadata) > _METADATA_ENTRIES:
            self._metadata.popitem(last=False)
        return body

    async def boss_call(self, method: str, path: str, token: str | None = None) -> Any:
        """``method`` on ``/v1/{path}`` one hop on, never cached: a metadata write or an id
        reservation. Its JSON answer (None for an empty body); a BossDB error comes back as
        it is. A metadata write forgets what is held of that resource's metadata."""
        if path.startswith("meta/"):
            resource = path.split("?", 1)[0]
            for key in [k for k in self._metadata if k[0].split("?", 1)[0] == resource]:
                del self._metadata[key]
        response = await self.context.http.get(
            f"{self._base}/v1/{path}", self.http_settings, where=self._where,
            headers=self._headers(token, "application/json"), method=method)
        return json_body(response, self._where) if response.content else None

    async def channel_info(self, ref: ChannelRef, token: str | None = None) -> ChannelInfo:
        c, e, ch = ref.collection, ref.experiment, ref.channel
        channel = await self.boss_json(dialect.channel(c, e, ch), token)
        experiment = await self.boss_json(dialect.experiment(c, e), token)
        frame_name = experiment.get("coord_frame") if isinstance(experiment, dict) else None
        if not isinstance(frame_name, str) or not _NAME.fullmatch(frame_name):
            # it goes into the next URL: a name like "../../admin" must never get there
            raise UpstreamError(f"{self._where} sent unusable metadata for {ref}: coord_frame "
                                f"{str(frame_name)[:60]!r} is not a name")
        frame = await self.boss_json(dialect.coord(frame_name), token)
        downsample = await self.boss_json(dialect.downsample(c, e, ch), token)
        # parsed once per set of bodies: this runs for every request to the channel
        bodies = (channel, experiment, frame, downsample)
        held = self._infos.get(ref)
        if held is not None and all(a is b for a, b in zip(held[0], bodies, strict=True)):
            return held[1]
        try:
            info = _channel_info(channel, experiment, frame, downsample, self.source.cuboid)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise UpstreamError(f"{self._where} sent unusable metadata for {ref}: "
                                f"{type(exc).__name__} {exc}") from exc
        checked_info(info, f"{self._where} ({ref})")
        if len(self._infos) >= _METADATA_ENTRIES:
            self._infos.clear()
        self._infos[ref] = (bodies, info)
        return info

    async def read(
        self, ref: ChannelRef, level: int, box: Box, t: int = 0, token: str | None = None
    ) -> np.ndarray | None:
        return (await self.read_encoded(ref, level, box, t, token))[0]

    forwards = True

    async def read_encoded(
        self, ref: ChannelRef, level: int, box: Box, t: int = 0, token: str | None = None,
        sink: FrameSink | None = None,
    ) -> tuple[np.ndarray | None, bytes | memoryview | None]:
        # The frame is kept as it came: every hop of a chain would otherwise compress the same
        # voxels again, serially, on every cold read. With a sink it is also forwarded as it
        # arrives, and handed over whole only once it has passed the same check.
        info = await self.channel_info(ref, token)
        self.check_level(level, len(info.levels))
        # A time range makes the answer 4-D (1, z, y, x): the same bytes as (z, y, x).
        time_part = f"{t}:{t + 1}/" if info.num_time_samples > 1 else ""
        url = (f"{self._base}/v1/cutout/{ref.collection}/{ref.experiment}/{ref.channel}/"
               f"{level}/{box}/{time_part}")
        nbytes = box.voxels * info.dtype.itemsize
        response = await self.context.http.get(
            url, self.http_settings, where=self._where,
            headers=self._headers(token, "application/blosc"),
            max_bytes=nbytes + BLOSC_SLACK, sink=sink,
        )
        try:
            data = await offload(decode_blosc, response.content, info.dtype, box.shape_zyx,
                                 nbytes=nbytes)
        except ValueError as exc:
            raise UpstreamError(f"{self._where} sent a bad cutout for {ref}: {exc}") from exc
        if sink is not None:
            sink.checked(response.content)
        return data, response.content


    def forget(self, ref: ChannelRef) -> None:
        c, e, ch = ref.collection, ref.experiment, ref.channel
        paths = {dialect.channel(c, e, ch), dialect.downsample(c, e, ch)}
        for key in [k for k in self._metadata if k[0] in paths]:
            del self._metadata[key]
        self._infos.pop(ref, None)

    async def write(self, ref: ChannelRef, level: int, box: Box, data: np.ndarray, t: int = 0,
                    token: str | None = None) -> None:
        # the same POST, one hop on: another relay (which writes and invalidates in its turn)
        # or BossDB; its error (a read-only relay's 405, BossDB's 403) comes back as it is
        info = await self.channel_info(ref, token)
        self.check_level(level, len(info.levels))
        time_part = f"{t}:{t + 1}/" if info.num_time_samples > 1 else ""
        url = (f"{self._base}/v1/cutout/{ref.collection}/{ref.experiment}/{ref.channel}/"
               f"{level}/{box}/{time_part}")
        body = await offload(encode, np.ascontiguousarray(data), MediaType.BLOSC,
                             nbytes=data.nbytes)
        headers = self._headers(token, "application/json")
        headers["Content-Type"] = MediaType.BLOSC.value
        await self.context.http.post(url, body, self.http_settings, where=self._where,
                                     headers=headers)


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
        grid = Vec3(*(int(v) for v in cuboid or downsample.get("cuboid_size", {}).get(
            key, BOSS_CUBOID)))
        if min(grid) < 1:
            raise ValueError(f"cuboid_size {list(grid)} at resolution {r}")
        if grid.prod() < _MIN_CUBOID_VOXELS:
            # a tiny grid (1×1×1) would make one upstream read per voxel: read and cache
            # whole multiples of it instead (still aligned to the upstream's grid)
            grid = default_cuboid((grid.x, grid.y, grid.z))
        levels.append(Level(
            voxel_size=(voxel[0], voxel[1], voxel[2]),
            bounds=Box(level_start, stop),
            cuboid=grid,
            origin=level_start,
        ))
    return ChannelInfo(
        dtype=dtype,
        type="annotation" if channel.get("type") == "annotation" else "image",
        levels=tuple(levels),
        voxel_unit=str(frame.get("voxel_unit") or "nanometers"),
        num_time_samples=max(1, int(experiment.get("num_time_samples") or 1)),
        default_time_sample=int(channel.get("default_time_sample") or 0),
        description=str(channel.get("description") or ""),
    )
