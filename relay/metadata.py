"""BossDB metadata JSON, synthesised from the channels a catalog serves.

Field sets and order follow BossDB's DRF serializers (reference/bossdb-dialect.md §1.3–1.4);
intern and neuroglancer validate these bodies, and neuroglancer cross-checks them, so all of
them are derived from the same ``ChannelInfo`` values. An experiment's coordinate frame is named
``{collection}_{experiment}`` and spans the union of its channels' level-0 bounds.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .catalog import Catalog, Channel
from .errors import ResourceNotFound
from .geometry import Box, Vec3
from .model import ChannelInfo, ChannelRef

__all__ = [
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
        if not upstream.passthrough and "*" not in (source.collection, source.experiment):
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
        "default_time_sample": 0,
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
