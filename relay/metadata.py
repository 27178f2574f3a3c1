"""BossDB metadata: one service answers every metadata route, passing a BossDB-speaking
upstream's own JSON through or synthesising it from the channels a catalog serves.

Field sets and order follow BossDB's DRF serializers (jhuapl-boss/boss
``bosscore/serializers.py``, and ``Downsample.get`` in ``bossspatialdb/views.py``);
intern and neuroglancer validate these bodies, and neuroglancer cross-checks them, so all of
them are derived from the same ``ChannelInfo`` values. An experiment's coordinate frame is named
``{collection}_{experiment}`` and spans the union of its channels' level-0 bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from . import dialect
from .catalog import Catalog, Channel
from .errors import RelayError, ResourceNotFound
from .geometry import Box, Vec3
from .model import ChannelInfo, ChannelRef, show

__all__ = [
    "BossMetadata",
    "ExperimentView",
    "channel_json",
    "collection_json",
    "coord_json",
    "downsample_json",
    "experiment_json",
    "experiment_view",
    "frame_name",
    "local_frames",
]

CREATOR = "relay"


@dataclass(frozen=True, slots=True)
class ExperimentView:
    collection: str
    name: str
    channels: list[Channel]

    @property
    def frame(self) -> Box:
        boxes = [c.info.levels[0].bounds for c in self.channels]
        return Box(
            Vec3(*(min(b.start[a] for b in boxes) for a in range(3))),
            Vec3(*(max(b.stop[a] for b in boxes) for a in range(3))),
        )

    @property
    def base(self) -> ChannelInfo:
        return self.channels[0].info


def frame_name(collection: str, experiment: str) -> str:
    return f"{collection}_{experiment}"


async def experiment_view(catalog: Catalog, collection: str, experiment: str,
                          token: str | None = None) -> ExperimentView:
    names = await catalog.channels(collection, experiment, token)
    channels = [await catalog.channel(ChannelRef(collection, experiment, n), token)
                for n in names]
    if not channels:
        raise ResourceNotFound(f"Experiment {experiment} has no channels")
    return ExperimentView(collection, experiment, channels)


def local_frames(catalog: Catalog) -> dict[str, tuple[str, str]]:
    """Frame name → (collection, experiment) for the experiments this relay describes itself."""
    frames: dict[str, tuple[str, str]] = {}
    for source, upstream in catalog.entries:
        local = catalog.speaks_boss(upstream) is None
        if local and "*" not in (source.collection, source.experiment):
            name = frame_name(source.collection, source.experiment)
            frames.setdefault(name, (source.collection, source.experiment))
    return frames


def collection_json(name: str, experiments: list[str]) -> dict[str, Any]:
    return {
        "name": name,
        "public": True,
        "description": "",
        "experiments": experiments,
        "creator": CREATOR,
    }


def _hierarchy_method(info: ChannelInfo) -> str:
    if len(info.levels) > 1 and info.levels[1].voxel_size[2] > info.levels[0].voxel_size[2]:
        return "isotropic"
    return "anisotropic"


def experiment_json(view: ExperimentView) -> dict[str, Any]:
    return {
        "channels": [c.ref.channel for c in view.channels],
        "name": view.name,
        "public": True,
        "description": "",
        "collection": view.collection,
        "coord_frame": frame_name(view.collection, view.name),
        "num_hierarchy_levels": max(len(c.info.levels) for c in view.channels),
        "hierarchy_method": _hierarchy_method(view.base),
        "num_time_samples": max(c.info.num_time_samples for c in view.channels),
        "time_step": None,
        "time_step_unit": "nanoseconds",  # intern calls .lower() on it: never null
        "creator": CREATOR,
    }


def channel_json(channel: Channel) -> dict[str, Any]:
    info = channel.info
    return {
        "name": channel.ref.channel,
        "public": True,
        "description": info.description,
        "experiment": channel.ref.experiment,
        "default_time_sample": info.default_time_sample,
        "type": info.type,
        "base_resolution": 0,
        "datatype": info.dtype.name,
        "creator": CREATOR,
        "sources": [],
        "downsample_status": "DOWNSAMPLED" if len(info.levels) > 1 else "NOT_DOWNSAMPLED",
        "related": [],
        # "spdb", never "cloudvol": with cloudvol intern.array bypasses the relay entirely.
        "storage_type": "spdb",
        "bucket": None,
        "cv_path": None,
    }


def coord_json(view: ExperimentView) -> dict[str, Any]:
    frame = view.frame
    voxel = view.base.levels[0].voxel_size
    return {
        "name": frame_name(view.collection, view.name),
        "description": "",
        "x_start": frame.start.x,
        "x_stop": frame.stop.x,
        "y_start": frame.start.y,
        "y_stop": frame.stop.y,
        "z_start": frame.start.z,
        "z_stop": frame.stop.z,
        "x_voxel_size": voxel[0],
        "y_voxel_size": voxel[1],
        "z_voxel_size": voxel[2],
        "voxel_unit": view.base.voxel_unit,
    }


def downsample_json(channel: Channel) -> dict[str, Any]:
    levels = channel.info.levels
    return {
        "status": channel_json(channel)["downsample_status"],
        "num_hierarchy_levels": len(levels),
        "voxel_size": {str(r): list(level.voxel_size) for r, level in enumerate(levels)},
        # BossDB reports [x_stop, y_stop, z_stop] per level: an exclusive upper corner.
        "extent": {str(r): list(level.bounds.stop) for r, level in enumerate(levels)},
        # The relay's cuboid grid, so a client that aligns to it hits whole cached cuboids.
        "cuboid_size": {str(r): list(level.cuboid) for r, level in enumerate(levels)},
    }


class BossMetadata:
    """Every BossDB metadata route's answer, for a caller's ``token``: the upstream's own JSON
    where a BossDB-speaking source claims the names, else synthesised from ``channel_info``.
    Names are checked by the caller (the API) before they get here."""

    def __init__(self, catalog: Catalog) -> None:
        self.catalog = catalog

    async def _passed(self, path: str, token: str | None, *names: str) -> Any | None:
        upstream = self.catalog.passthrough(*names)
        return None if upstream is None else await upstream.boss_json(path, token)

    async def collections(self, token: str | None) -> dict[str, Any]:
        return {"collections": await self.catalog.collections(token)}

    async def collection(self, c: str, token: str | None) -> Any:
        passed = await self._passed(dialect.collection(c), token, c)
        if passed is not None:
            return passed
        return collection_json(c, await self.catalog.experiments(c, token))

    async def experiments(self, c: str, token: str | None) -> dict[str, Any]:
        return {"experiments": await self.catalog.experiments(c, token)}

    async def experiment(self, c: str, e: str, token: str | None) -> Any:
        passed = await self._passed(dialect.experiment(c, e), token, c, e)
        if passed is not None:
            return passed
        return experiment_json(await experiment_view(self.catalog, c, e, token))

    async def channels(self, c: str, e: str, token: str | None) -> dict[str, Any]:
        return {"channels": await self.catalog.channels(c, e, token)}

    async def channel(self, c: str, e: str, ch: str, token: str | None) -> Any:
        passed = await self._passed(dialect.channel(c, e, ch), token, c, e, ch)
        if passed is not None:
            return passed
        return channel_json(await self.catalog.channel(ChannelRef(c, e, ch), token))

    async def downsample(self, c: str, e: str, ch: str, token: str | None) -> Any:
        passed = await self._passed(dialect.downsample(c, e, ch), token, c, e, ch)
        if passed is not None:
            return passed
        return downsample_json(await self.catalog.channel(ChannelRef(c, e, ch), token))

    async def coords(self, token: str | None) -> dict[str, Any]:
        names = list(local_frames(self.catalog))
        for upstream in self.catalog.boss_speakers:
            names.extend((await upstream.boss_json(dialect.coords(), token))["coords"])
        return {"coords": list(dict.fromkeys(names))}

    async def coord(self, name: str, token: str | None) -> Any:
        local = local_frames(self.catalog).get(name)
        if local is not None:
            return coord_json(await experiment_view(self.catalog, *local, token))
        for upstream in self.catalog.boss_speakers:
            try:
                return await upstream.boss_json(dialect.coord(name), token)
            except RelayError as exc:
                if exc.status != 404:
                    raise
        raise ResourceNotFound(f"{show(name)} does not exist.")
