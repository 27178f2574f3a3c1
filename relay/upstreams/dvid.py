"""``kind: dvid`` — a DVID server's grayscale and label instances (as DVID's own help texts describe
them: ``datatype/imageblk``, ``labelmap``, ``labelarray``, ``labelblk`` in janelia-flyem/dvid).

- ``uuid`` names the node: a UUID, a unique prefix, ``prefix:branch`` or ``:branch`` (the leaf
  of the branch, looked up with ``/api/repo/{uuid}/branch-versions/{branch}``). The concrete
  UUID is part of the cache identity, so a branch that moves on never serves the old node's
  bytes; it is re-resolved every ``metadata_ttl_seconds``.
- ``instance`` names the data instance (default: the channel name). ``uint8blk`` /
  ``uint16blk`` instances are images; their coarser levels are the instances ``name_1``,
  ``name_2``, … that exist in the repo (the neuroglancer / neuclease convention).
  ``labelmap`` / ``labelarray`` instances are uint64 annotations with levels 0 …
  ``MaxDownresLevel`` (``?scale=N``), read LZ4-compressed; ``labelblk`` has one level.
- Extents come from ``/info``; DVID's MaxPoint is inclusive. Each level is 2× coarser in x, y
  and z, so the hierarchy is isotropic. The cuboid grid is aligned to DVID blocks.
- DVID answers errors as plain-text 400s: an unknown instance or UUID becomes a 404 (code
  4000), anything else a 400 carrying DVID's text.
"""

from __future__ import annotations

import logging
import re
import time
from dataclasses import dataclass
from typing import Any

import lz4.block
import numpy as np
from pydantic import Field

from ..codecs import DTYPES
from ..errors import (
    BadRequest,
    ConfigError,
    MethodNotAllowed,
    RelayError,
    ResourceNotFound,
    UpstreamError,
)
from ..geometry import Box, Vec3
from ..model import ChannelInfo, ChannelRef, Level, checked_info, default_cuboid
from ._levels import voxel_unit
from .base import DOWN_FOR, NoOptions, Upstream, UpstreamContext
from .http import Reply, describe, json_body

__all__ = ["DvidUpstream"]

log = logging.getLogger(__name__)

_IMAGE_TYPES = ("uint8blk", "uint16blk")
_MULTISCALE_LABELS = ("labelmap", "labelarray")
_LABEL_TYPES = (*_MULTISCALE_LABELS, "labelblk")
_NOT_FOUND = ("invalid data instance name", "could not find UUID", "more than one UUID")
_UUID = re.compile(r"[0-9a-fA-F]{1,64}")
_EMPTY_BLOCK = "unable to get label block"


@dataclass(frozen=True, slots=True)
class _Opened:
    node: str                     # the concrete UUID
    info: ChannelInfo
    instances: tuple[str, ...]    # the instance read at each level
    scaled: bool                  # levels are ?scale=N of one label instance
    expires: float


def _client_error(response: Reply) -> RelayError | None:
    """DVID's plain-text 4xx as the relay's error; None for its 400 on a single absent label
    block fetched compressed, which is not an error: the block holds no data."""
    text = response.text.strip()[:200]
    if response.status == 404 or any(marker in text for marker in _NOT_FOUND):
        return ResourceNotFound(f"DVID: {text}")
    if _EMPTY_BLOCK in text:
        return None
    return BadRequest(f"DVID: {text}")


class DvidOptions(NoOptions):
    #: the node: a UUID, a unique prefix, ``prefix:branch`` or ``:branch`` (the branch's leaf)
    uuid: str = Field(pattern=r"^[0-9a-fA-F]*(:[A-Za-z0-9_.-]*)?$")
    #: the data instance (default: the channel name)
    instance: str | None = Field(None, pattern=r"^[A-Za-z0-9_.-]{1,128}$")


class DvidUpstream(Upstream):
    kind = "dvid"
    writes = True
    Options = DvidOptions
    options: DvidOptions

    def __init__(self, source: Any, context: UpstreamContext | None = None) -> None:
        super().__init__(source, context)
        self._base = source.url.rstrip("/")
        self._where = describe(self._base, "DVID at")
        self._opened: dict[str, _Opened] = {}

    @property
    def store_identity(self) -> str:
        nodes = sorted({o.node for o in self._opened.values()})
        return f"{self._base}:{','.join(nodes) or self.options.uuid}"

    def _instance_name(self, ref: ChannelRef) -> str:
        return self.options.instance or ref.channel

    async def _get_json(self, path: str) -> Any:
        response = await self.context.http.get(f"{self._base}/api/{path}", self.http_settings,
                                               where=self._where, on_client_error=_client_error)
        return json_body(response, self._where)

    async def _resolve_node(self, instance: str) -> tuple[str, dict[str, Any]]:
        """The concrete UUID of the configured node, and its repo's info."""
        spec = str(self.options.uuid)
        prefix, colon, branch = spec.partition(":")
        if colon and not prefix:
            repos = await self._get_json("repos/info")
            holders = [root for root, repo in repos.items()
                       if instance in (repo.get("DataInstances") or {})]
            if not holders:
                raise ResourceNotFound(f"DVID: no repo holds an instance {instance!r}")
            prefix = _uuid(holders[0], "a repo root")
        repo = await self._get_json(f"repo/{prefix}/info")
        if colon:
            versions = await self._get_json(f"repo/{prefix}/branch-versions/{branch or 'master'}")
            return _uuid(versions[0] if isinstance(versions, list) and versions else None,
                         f"the leaf of branch {branch or 'master'!r}"), repo
        nodes = [u for u in repo["DAG"]["Nodes"] if u.startswith(prefix)]
        if len(nodes) != 1:
            raise ResourceNotFound(f"DVID: no single node matches {prefix!r}")
        return _uuid(nodes[0], "a node"), repo

    async def _open(self, ref: ChannelRef) -> _Opened:
        name = self._instance_name(ref)
        held = self._opened.get(name)
        if held is not None and held.expires > time.monotonic():
            return held
        memo = self.context.memo
        key = f"{self.memo_prefix}/open/{name}"
        try:
            # concurrent first requests for the instance share one look-up
            opened = await self.open_once(lambda: self._open_fresh(name), key=name)
        except UpstreamError as exc:
            if isinstance(exc, ConfigError) or exc.status not in (502, 503, 504):
                raise
            # unreachable: the node and description it gave last (before a restart, too),
            # so the cuboids cached under that node's identity are still found
            remembered = await memo.recall(key) if memo is not None else None
            if remembered is None:
                raise
            try:
                opened = _Opened(
                    node=_uuid(remembered["node"], "a remembered node"),
                    info=ChannelInfo.from_json(remembered["info"]),
                    instances=tuple(str(i) for i in remembered["instances"]),
                    scaled=bool(remembered["scaled"]),
                    expires=time.monotonic() + DOWN_FOR)
            except (KeyError, TypeError, ValueError):
                raise exc from None
            log.warning("%s: serving the node and description remembered for %r (%s)",
                        self._where, name, exc.message)
        else:
            if memo is not None:
                memo.remember(key, {"node": opened.node, "info": opened.info.to_json(),
                                    "instances": list(opened.instances),
                                    "scaled": opened.scaled})
        self._opened[name] = opened
        return opened

    async def _open_fresh(self, name: str) -> _Opened:
        try:
            return await self._describe(name)
        except (KeyError, TypeError, ValueError, IndexError, AttributeError) as exc:
            raise UpstreamError(f"{self._where} sent unusable metadata for instance {name!r}: "
                                f"{type(exc).__name__} {exc}") from exc

    async def _describe(self, name: str) -> _Opened:
        node, repo = await self._resolve_node(name)
        info = await self._get_json(f"node/{node}/{name}/info")
        type_name = info["Base"]["TypeName"]
        if type_name not in (*_IMAGE_TYPES, *_LABEL_TYPES):
            raise ConfigError(f"{self._where}: instance {name!r} is a {type_name}, "
                              "which has no BossDB equivalent")
        levels = [self._level(info, 0)]
        instances = [name]
        scaled = type_name in _MULTISCALE_LABELS
        if scaled:
            top = int(info["Extended"].get("MaxDownresLevel") or 0)
            levels += [self._level(info, r) for r in range(1, top + 1)]
            instances += [name] * top
        elif type_name in _IMAGE_TYPES:
            known = repo.get("DataInstances") or {}
            while f"{name}_{len(levels)}" in known:
                coarser = f"{name}_{len(levels)}"
                levels.append(self._level(await self._get_json(f"node/{node}/{coarser}/info"),
                                          len(levels), own_extents=True))
                instances.append(coarser)
        dtype = DTYPES.get(info["Extended"]["Values"][0]["DataType"])
        if dtype is None:
            raise ConfigError(f"{self._where}: instance {name!r} has no BossDB datatype")
        channel_info = ChannelInfo(
            dtype=dtype,
            type="annotation" if type_name in _LABEL_TYPES else "image",
            levels=tuple(levels),
            voxel_unit=_unit(info["Extended"].get("VoxelUnits")),
            description=self.source.description,
        )
        checked_info(channel_info, f"{self._where} instance {name!r}")
        return _Opened(node, channel_info, tuple(instances), scaled,
                       time.monotonic() + self.source.metadata_ttl_seconds)

    def _level(self, info: dict[str, Any], r: int, own_extents: bool = False) -> Level:
        extended = info["Extended"]
        lo, hi = info["Extents"]["MinPoint"], info["Extents"]["MaxPoint"]
        if lo is None or hi is None:
            raise ResourceNotFound(f"DVID instance {info['Base']['Name']!r} holds no data yet")
        factor = 1 if own_extents else 2**r
        # MaxPoint is inclusive; a coarser level holds voxel i // 2^r of each level-0 voxel i
        start = Vec3(*(int(v) // factor for v in lo))
        stop = Vec3(*(int(v) // factor + 1 for v in hi))
        voxel = [float(v) for v in extended["VoxelSize"]]
        if not own_extents:
            voxel = [v * factor for v in voxel]
        block = Vec3(*(int(v) for v in extended["BlockSize"]))
        cuboid = self.source.cuboid or default_cuboid(block)
        return Level(voxel_size=(voxel[0], voxel[1], voxel[2]), bounds=Box(start, stop),
                     cuboid=Vec3(*cuboid), origin=Vec3(0, 0, 0))

    async def channel_info(self, ref: ChannelRef, token: str | None = None) -> ChannelInfo:
        return (await self._open(ref)).info

    async def read(
        self, ref: ChannelRef, level: int, box: Box, t: int = 0, token: str | None = None
    ) -> np.ndarray | None:
        opened = await self._open(ref)
        self.check_level(level, len(opened.instances))
        size, start = box.size, box.start
        url = (f"{self._base}/api/node/{opened.node}/{opened.instances[level]}/raw/0_1_2/"
               f"{size.x}_{size.y}_{size.z}/{start.x}_{start.y}_{start.z}")
        labels = opened.info.dtype == np.uint64
        params = {"compression": "lz4"} if labels else {}
        if opened.scaled:
            params["scale"] = str(level)
        expected = box.voxels * opened.info.dtype.itemsize
        # raw voxels, or an LZ4 block of them (at most n + n/255 + 16 bytes)
        bound = expected + expected // 255 + 64 * 1024
        response = await self.context.http.get(url, self.http_settings, where=self._where,
                                               params=params, on_client_error=_client_error,
                                               max_bytes=bound)
        if response.status >= 400:  # the one 4xx _client_error lets through: no block there
            return None
        body = response.content
        if labels:
            try:
                body = lz4.block.decompress(body, uncompressed_size=expected)
            except lz4.block.LZ4BlockError as exc:
                raise UpstreamError(f"{self._where} sent a bad LZ4 block for {ref}") from exc
        if len(body) != expected:
            raise UpstreamError(f"{self._where} sent {len(body)} bytes for {ref} where "
                                f"{expected} were expected")
        data: np.ndarray = np.frombuffer(body, dtype=opened.info.dtype).reshape(box.shape_zyx)
        return data


    def forget(self, ref: ChannelRef) -> None:
        self._opened.pop(self._instance_name(ref), None)

    async def _writable_level(self, ref: ChannelRef, level: int) -> _Opened:
        opened = await self._open(ref)
        self.check_level(level, len(opened.instances))
        if opened.scaled and level > 0:
            raise MethodNotAllowed(f"{self._where}: DVID makes scale {level} of a label "
                                   "instance from scale 0 itself; write resolution 0")
        return opened

    async def reserve_ids(self, ref: ChannelRef, count: int) -> int | None:
        # a labelmap keeps its own counter (POST nextlabel/{n} → {"start", "end"}), shared with
        # every other DVID client proofreading the same instance: the relay uses it, so its
        # blocks never collide with theirs
        opened = await self._open(ref)
        instance = opened.instances[0]
        held = await self._get_json(f"node/{opened.node}/{instance}/info")
        if not isinstance(held, dict) or held.get("Base", {}).get("TypeName") != "labelmap":
            return None
        base = f"node/{opened.node}/{instance}/nextlabel"
        try:
            if count == 0:
                return int((await self._get_json(base))["nextlabel"])
            response = await self.context.http.post(
                f"{self._base}/api/{base}/{count}", b"", self.http_settings, where=self._where,
                on_client_error=_client_error)
            return int(json_body(response, self._where)["start"])
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"{self._where} sent an unusable nextlabel answer") from exc

    async def check_write(self, ref: ChannelRef, level: int) -> None:
        opened = await self._writable_level(ref, level)
        # asked afresh: a node is locked (committed) at any time, and then refuses mutations
        status = await self._get_json(f"node/{opened.node}/status")
        if isinstance(status, dict) and status.get("Locked") is True:
            raise BadRequest(f"DVID: node {opened.node} is locked (committed): it takes no "
                             "writes; write to a child node (a new version) instead")

    async def write(self, ref: ChannelRef, level: int, box: Box, data: np.ndarray, t: int = 0,
                    token: str | None = None) -> None:
        # the node's lock is not asked again (``check_write`` did, just before): a node
        # locked meanwhile refuses the POST itself
        opened = await self._writable_level(ref, level)
        instance = opened.instances[level]
        # asked afresh: the block size decides which voxels a POST replaces
        held = await self._get_json(f"node/{opened.node}/{instance}/info")
        try:
            block = Vec3(*(int(v) for v in held["Extended"]["BlockSize"]))
        except (KeyError, TypeError, ValueError) as exc:
            raise UpstreamError(f"{self._where} sent no usable BlockSize for {ref}") from exc
        aligned = Box(Vec3(*(s // b * b for s, b in zip(box.start, block, strict=True))),
                      Vec3(*(-(-s // b) * b for s, b in zip(box.stop, block, strict=True))))
        voxels = data
        if aligned != box:
            # DVID takes block-aligned POSTs only: the blocks the box covers in part are read
            # (zeros where never written, as /raw reads them) and written back whole
            around = await self.read(ref, level, aligned, t, token)
            voxels = (np.zeros(aligned.shape_zyx, opened.info.dtype) if around is None
                      else np.array(around))
            voxels[box.zyx_slices(aligned.start)] = data
        size, start = aligned.size, aligned.start
        url = (f"{self._base}/api/node/{opened.node}/{instance}/raw/0_1_2/"
               f"{size.x}_{size.y}_{size.z}/{start.x}_{start.y}_{start.z}")
        body = np.ascontiguousarray(voxels, dtype=opened.info.dtype.newbyteorder("<"))
        await self.context.http.post(url, body.tobytes(), self.http_settings, where=self._where,
                                     headers={"Content-Type": "application/octet-stream"},
                                     on_client_error=_write_error)


def _write_error(response: Reply) -> RelayError:
    """DVID's refusal of a write (a locked node, a bad box), passed on with its text."""
    return _client_error(response) or BadRequest(f"DVID: {response.text.strip()[:200]}")


def _uuid(value: Any, what: str) -> str:
    """A UUID from DVID's answers, checked before it goes into a URL (and the cache key)."""
    if not isinstance(value, str) or not _UUID.fullmatch(value):
        raise UpstreamError(f"DVID sent {str(value)[:40]!r} as {what}: not a UUID")
    return value


def _unit(units: Any) -> str:
    """The BossDB unit of DVID's ``VoxelUnits`` (a list, one per axis; the first is used)."""
    unit = units[0] if isinstance(units, list) and units else units
    return voxel_unit(str(unit) if unit else None, None)
