"""Meshes of segmentation (relay/meshes.py), read by cloud-volume's own mesh reader over the
relay's precomputed URL and by curl-style GETs of the BossDB-side route: made by the relay from a
zarr labelling with boxes across cell boundaries, or passed through from a precomputed store that
has its own mesh directory."""

from __future__ import annotations

import contextlib
import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import zarr
import zmesh
from cloudvolume import CloudVolume, Mesh
from starlette.testclient import TestClient

from relay.app import create_app

from .conftest import make_settings
from .servers import RelayProcess, relay_over

SHAPE_ZYX = (21, 70, 90)  # 3 × 3 × 3 cells of 32 × 32 × 8, the last ones partial
VOXEL = (4.0, 4.0, 40.0)
#: segment → its box (z0, z1, y0, y1, x0, x1), painted in this order: boxes across cell
#: lines, one at the far edges (and a large id), one inside a single cell, one that starts on
#: cell lines and at the volume's first z
SEGMENTS = {
    5: (2, 15, 10, 50, 20, 70),
    2**40 + 7: (5, 21, 40, 70, 60, 90),
    9: (9, 12, 3, 7, 3, 9),
    11: (0, 8, 32, 40, 32, 64),
}


def labels() -> np.ndarray:
    out = np.zeros(SHAPE_ZYX, np.uint64)
    for segid, (z0, z1, y0, y1, x0, x1) in SEGMENTS.items():
        out[z0:z1, y0:y1, x0:x1] = segid
    return out


def _bounds_nm(segid: int) -> tuple[np.ndarray, np.ndarray]:
    z0, z1, y0, y1, x0, x1 = SEGMENTS[segid]
    voxel = np.array(VOXEL)
    return np.array([x0, y0, z0]) * voxel, np.array([x1, y1, z1]) * voxel


def _inside(vertices: np.ndarray, segid: int) -> None:
    low, high = _bounds_nm(segid)
    slack = np.array(VOXEL)  # ± one voxel
    assert len(vertices) > 0
    assert (vertices >= low - slack).all() and (vertices <= high + slack).all(), (
        vertices.min(0), vertices.max(0), low, high)
    # and it reaches the box's far corners: a mesh of the whole segment, not of one cell
    assert np.allclose(vertices.min(0), low, atol=slack.max())
    assert np.allclose(vertices.max(0), high, atol=slack.max())


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("meshes")
    path = root / "seg.zarr"
    array = zarr.create_array(str(path), shape=SHAPE_ZYX, chunks=(8, 32, 32), dtype=np.uint64,
                              fill_value=0)
    array[:] = labels()
    made = {"collection": "m", "experiment": "e", "channel": "seg", "kind": "zarr",
            "url": path.as_uri(), "voxel_size": list(VOXEL), "cuboid": [32, 32, 8],
            "type": "annotation", "downsample": "none"}
    image = {**made, "channel": "img", "type": "image"}
    # a precomputed store with its own meshes, written by cloud-volume (gzip-compressed files)
    stored = root / "stored"
    info = CloudVolume.create_new_info(
        num_channels=1, layer_type="segmentation", data_type="uint64", encoding="raw",
        resolution=list(VOXEL), voxel_offset=[0, 0, 0], chunk_size=[32, 32, 8],
        volume_size=[SHAPE_ZYX[2], SHAPE_ZYX[1], SHAPE_ZYX[0]])
    info["mesh"] = "meshes"
    vol = CloudVolume(stored.as_uri(), info=info, progress=False)
    vol.commit_info()
    vol[:, :, :] = labels().transpose(2, 1, 0)[..., None]
    tetrahedron = Mesh(
        np.array([[0, 0, 0], [40, 0, 0], [0, 40, 0], [0, 0, 400]], np.float32),
        np.array([[0, 1, 2], [0, 1, 3], [0, 2, 3], [1, 2, 3]], np.uint32), None, segid=5)
    vol.mesh.put(tetrahedron)
    passed = {"collection": "m", "experiment": "stored", "channel": "seg",
              "kind": "precomputed", "url": stored.as_uri()}
    return {"root": root, "sources": [made, image, passed], "stored": stored,
            "tetrahedron": tetrahedron}


@pytest.fixture(scope="module")
def relay(stores: dict[str, Any]) -> Iterator[RelayProcess]:
    with relay_over(stores["root"], stores["sources"]) as process:
        yield process


def test_cloud_volume_reads_made_meshes(relay: RelayProcess) -> None:
    vol = CloudVolume(f"precomputed://{relay.url}/precomputed/m/e/seg", progress=False,
                      cache=False)
    assert vol.info["mesh"] == "mesh"
    for segid in SEGMENTS:
        mesh = vol.mesh.get(segid)
        _inside(np.asarray(mesh.vertices), segid)
        assert len(mesh.faces) > 0


def test_the_mesh_route_gives_obj_and_precomputed(relay: RelayProcess) -> None:
    segid = 2**40 + 7
    obj = httpx.get(f"{relay.url}/v1/mesh/m/e/seg/{segid}/")
    assert obj.status_code == 200 and obj.headers["content-type"] == "model/obj"
    vertices = np.array([[float(v) for v in line.split()[1:4]]
                         for line in obj.text.splitlines() if line.startswith("v ")])
    faces = [line for line in obj.text.splitlines() if line.startswith("f ")]
    _inside(vertices, segid)
    assert faces
    raw = httpx.get(f"{relay.url}/latest/mesh/m/e/seg/{segid}?format=precomputed")
    assert raw.status_code == 200
    mesh = zmesh.Mesh.from_precomputed(raw.content)
    _inside(mesh.vertices, segid)


@pytest.mark.parametrize("segid", list(SEGMENTS))
def test_made_meshes_are_closed_surfaces(relay: RelayProcess, segid: int) -> None:
    """Fragments meet without a crack and the volume's own faces are closed: every edge of
    the merged mesh is shared by exactly two triangles."""
    body = httpx.get(f"{relay.url}/v1/mesh/m/e/seg/{segid}/?format=precomputed").content
    faces = zmesh.Mesh.from_precomputed(body).faces
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]),
                    axis=1)
    _, counts = np.unique(edges, axis=0, return_counts=True)
    assert len(faces) > 0 and (counts == 2).all(), np.bincount(counts)


def test_stored_meshes_are_passed_through_as_they_are(relay: RelayProcess,
                                                      stores: dict[str, Any]) -> None:
    base = f"{relay.url}/precomputed/m/stored/seg/mesh"
    stored: Path = stores["stored"] / "meshes"
    for name in ("5:0", "5:0:1"):
        body = httpx.get(f"{base}/{name}").content
        on_disk = (stored / name).read_bytes() if (stored / name).exists() else gzip.decompress(
            (stored / f"{name}.gz").read_bytes())
        if on_disk[:2] == b"\x1f\x8b":
            on_disk = gzip.decompress(on_disk)
        assert body == on_disk, name
    vol = CloudVolume(f"precomputed://{relay.url}/precomputed/m/stored/seg", progress=False,
                      cache=False)
    mesh = vol.mesh.get(5)
    direct = CloudVolume(stores["stored"].as_uri(), progress=False).mesh.get(5)
    assert np.array_equal(mesh.vertices, direct.vertices)
    assert np.array_equal(mesh.faces, direct.faces)
    assert sorted(map(tuple, mesh.vertices)) == sorted(map(tuple, stores["tetrahedron"].vertices))
    assert httpx.get(f"{base}/6:0").status_code == 404


def test_fragments_are_made_once_and_errors_are_clear(stores: dict[str, Any],
                                                      tmp_path: Path) -> None:
    app = create_app(make_settings(stores["sources"], tmp_path / "cache"))
    with TestClient(app, base_url="http://localhost") as client:
        counters = app.state.metrics.counters
        manifest = client.get("/precomputed/m/e/seg/mesh/5:0").json()["fragments"]
        # the cells its box touches (x 20:70, y 10:50, z 2:15 on a 32 × 32 × 8 grid)
        assert len(manifest) == 3 * 2 * 2
        for name in manifest:
            assert client.get(f"/precomputed/m/e/seg/mesh/{name}").status_code == 200
        made = counters["mesh_fragments_made_total"]
        reads = counters["upstream_reads_total"]
        assert made == len(manifest)
        assert client.get("/v1/mesh/m/e/seg/5/").status_code == 200  # from cached fragments
        assert counters["mesh_fragments_made_total"] == made
        assert counters["upstream_reads_total"] == reads
        for path, status in [("/v1/mesh/m/e/seg/0/", 400), ("/v1/mesh/m/e/seg/12/", 404),
                             (f"/v1/mesh/m/e/seg/{2**64}/", 400),
                             (f"/precomputed/m/e/seg/mesh/{2**64}:0", 404),
                             ("/precomputed/m/e/seg/mesh/0:0", 404),
                             (f"/precomputed/m/e/seg/mesh/{2**64 - 1}:0", 404),
                             ("/v1/mesh/m/e/seg/5/?format=stl", 400),
                             ("/v1/mesh/m/e/img/5/", 404),
                             ("/precomputed/m/e/img/mesh/info", 404),
                             ("/precomputed/m/e/seg/mesh/..%2Finfo", 404),
                             ("/precomputed/m/e/seg/mesh/5:0:r0_9_9_9", 404)]:
            response = client.get(path)
            assert response.status_code == status, path
            assert set(response.json()) == {"status", "code", "message"}


@pytest.mark.parametrize("fleet", [False, True], ids=["one-relay", "fleet"])
def test_manifests_of_a_writable_source_use_the_label_index_and_follow_writes(
        stores: dict[str, Any], tmp_path: Path, fleet: bool, redis_server: Any) -> None:
    """Finding 11 of issue 25: every manifest of a writable (or ttl_seconds) source rescanned
    the whole mesh level. Now the label index is kept for them too: made once, one cache
    lookup per cell after that, and true after a write (on the writer and, in a fleet, on a
    relay that built its index before the write)."""
    import shutil

    import blosc

    shutil.copytree(stores["root"] / "seg.zarr", tmp_path / "seg.zarr")
    source = {**stores["sources"][0], "url": (tmp_path / "seg.zarr").as_uri(),
              "writable": True}
    shared = {"redis_url": redis_server.url, "redis_prefix": f"{tmp_path.name}:"} if fleet else {}
    apps = [create_app(make_settings([source], tmp_path / f"cache-{name}", **shared))
            for name in ("a", "b")[:1 + fleet]]
    with contextlib.ExitStack() as stack:
        # one client per app: two clients of one app would run its lifespan twice, on two
        # event loops (its write-behind then drains on a loop it was not made on)
        clients = [stack.enter_context(TestClient(app, base_url="http://localhost"))
                   for app in apps]
        a, b = clients[0], clients[-1]

        def names(client: TestClient, segid: int) -> set[str]:
            response = client.get(f"/precomputed/m/e/seg/mesh/{segid}:0")
            if response.status_code == 404:
                return set()
            assert response.status_code == 200, response.text
            return set(response.json()["fragments"])

        cells = 27  # 3 × 3 × 3 cells of 32 × 32 × 8
        before = {client: names(client, 11) for client in (a, b)}
        assert len(before[a]) == 4 and before[b] == before[a]
        # made once (in a fleet, by the first relay: the second finds them in Redis)
        assert apps[0].state.metrics.counters["label_index_cells_made_total"] == cells
        assert apps[-1].state.metrics.counters["label_index_cells_made_total"] in (0, cells)
        reads = apps[0].state.metrics.counters["upstream_reads_total"]
        assert len(names(a, 5)) == 12 and names(a, 9)  # the index, not the voxels, again
        assert apps[0].state.metrics.counters["label_index_cells_made_total"] == cells
        assert apps[0].state.metrics.counters["upstream_reads_total"] == reads
        # segment 11 (z 0:8, y 32:40, x 32:64) painted over as 77
        written = a.post("/v1/cutout/m/e/seg/0/32:64/32:40/0:8/",
                         content=blosc.compress(np.full((8, 8, 32), 77, np.uint64).tobytes(),
                                                typesize=8),
                         headers={"Content-Type": "application/blosc"})
        assert written.status_code == 201, written.text
        for client in (a, b):
            assert names(client, 11) == set()
            assert names(client, 77) == {n.replace(str(11), "77", 1) for n in before[a]}
        # only the cells the write touched (with their margins) were made again, once
        assert sum(app.state.metrics.counters["label_index_cells_made_total"]
                   for app in apps) == cells + 4
