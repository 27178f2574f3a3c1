"""Neuroglancer's own client (from the PyPI `neuroglancer` package) in headless Chromium reads
the relay's precomputed dialect: an image layer and a segmentation layer of the demo.

Every browser wait has a timeout: in neuroglancer 2.41.2 a failed layer makes the blocking
screenshot call wait forever (reference/neuroglancer.md §4.3), so screenshots are taken with
``async_screenshot`` and a bounded ``Event.wait``.
"""

from __future__ import annotations

import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import neuroglancer
import neuroglancer.webdriver
import numpy as np
import pytest
import yaml
import zarr
from cloudvolume import CloudVolume

from relay.demo import demo_sources

from .servers import RelayProcess, self_signed

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
WAIT = 90.0  # seconds for any one browser round trip
SIZE = (320, 240)
CENTER = (512, 512, 32)  # x, y, z voxel at the centre of the view


@pytest.fixture(scope="module")
def relay(demo_relay: RelayProcess) -> RelayProcess:
    return demo_relay


@pytest.fixture(scope="module")
def webdriver() -> Iterator[Any]:
    assert os.path.exists(CHROMIUM), "chromium is installed (apt-get install chromium)"
    os.environ.setdefault("SE_OFFLINE", "true")  # selenium: use chromedriver from PATH
    neuroglancer.set_server_bind_address("127.0.0.1")
    driver = neuroglancer.webdriver.Webdriver(
        headless=True, docker=True, browser_binary_path=CHROMIUM, window_size=(800, 600),
        print_logs=False,
        extra_command_line_args=["--enable-unsafe-swiftshader", "--disable-background-networking",
                                 "--disable-component-update", "--disable-sync",
                                 "--no-first-run"],
    )
    yield driver
    driver.__exit__(None, None, None)


def screenshot(viewer: Any) -> np.ndarray:
    """RGBA pixels of a SIZE screenshot, or a clear failure after WAIT seconds."""
    with viewer.config_state.txn() as s:
        s.show_ui_controls = False
        s.show_panel_borders = False
        s.viewer_size = list(SIZE)
    for _ in range(5):
        done = threading.Event()
        replies: list[Any] = []

        def handler(reply: Any, replies: list[Any] = replies, done: threading.Event = done
                    ) -> None:
            replies.append(reply)
            done.set()

        viewer.async_screenshot(handler)
        assert done.wait(WAIT), "neuroglancer never became ready (a layer failed to load?)"
        shot = replies[0].screenshot
        if (shot.width, shot.height) == SIZE:
            pixels: np.ndarray = shot.image_pixels
            return pixels
    raise AssertionError("neuroglancer did not take the requested screenshot size")



def _bare(s: Any, layout: str) -> None:
    """The demo's coordinate space, cleared of layers, with nothing drawn but the data."""
    s.dimensions = neuroglancer.CoordinateSpace(names=["x", "y", "z"], units="nm",
                                                scales=[4, 4, 40])
    s.layers.clear()
    s.layout = layout
    s.show_axis_lines = False
    s.show_scale_bar = False
    s.show_default_annotations = False


def _show(viewer: Any, relay: RelayProcess, segments: list[int]) -> None:
    base = f"precomputed://{relay.url}/precomputed/demo/synthetic"
    colors = ["#ff0000", "#00ff00", "#0000ff", "#ffff00"]
    with viewer.txn() as s:
        _bare(s, "xy")
        s.layers.append(name="em", layer=neuroglancer.ImageLayer(source=f"{base}/em"))
        if segments:
            s.layers.append(name="seg", layer=neuroglancer.SegmentationLayer(
                source=f"{base}/seg", segments=segments,
                segment_colors={sid: colors[i % 4] for i, sid in enumerate(segments)},
                selected_alpha=1.0, hide_segment_zero=True))
        s.position = [CENTER[0], CENTER[1], CENTER[2] + 0.5]
        s.cross_section_scale = 1  # one voxel per screen pixel


def _truth_slice(demo_dir: Path) -> np.ndarray:
    em = zarr.open_array(str(demo_dir / "em.ome.zarr" / "0"), mode="r")
    w, h = SIZE
    x0, y0 = CENTER[0] - w // 2, CENTER[1] - h // 2
    return np.asarray(em[CENTER[2], y0:y0 + h, x0:x0 + w])


def _segments(demo_dir: Path) -> tuple[list[int], np.ndarray]:
    seg = CloudVolume((demo_dir / "precomputed" / "seg").as_uri(), progress=False)
    w, h = SIZE
    x0, y0 = CENTER[0] - w // 2, CENTER[1] - h // 2
    labels = np.asarray(seg[x0:x0 + w, y0:y0 + h, CENTER[2]])[:, :, 0, 0].T  # (y, x)
    ids, counts = np.unique(labels, return_counts=True)
    return [int(i) for i in ids[np.argsort(counts)[::-1][:4]]], labels


def test_image_and_segmentation_render_from_the_relay(
        relay: RelayProcess, webdriver: Any, demo_dir: Path, tmp_path: Path) -> None:
    viewer = webdriver.viewer
    requests_before = int(relay.metrics().get("relay_requests_total", 0))
    _show(viewer, relay, segments=[])
    pixels = screenshot(viewer)
    grey = pixels[..., 0].astype(int)
    truth = _truth_slice(demo_dir).astype(int)
    assert grey.std() > 10 and len(np.unique(grey)) > 20  # data, not a blank canvas
    # raw encoding at one voxel per pixel: the screen shows exactly the stored voxels
    assert np.abs(grey - truth).mean() < 2.0
    # the relay served the info and chunk requests
    assert relay.metrics()["relay_requests_total"] > requests_before

    segments, labels = _segments(demo_dir)
    _show(viewer, relay, segments=segments)
    pixels = screenshot(viewer)
    red = (pixels[..., 0] > 200) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    expected_red = labels == segments[0]
    assert red.sum() > 0.5 * expected_red.sum()  # the largest segment is drawn in red
    assert (red & expected_red).sum() > 0.9 * red.sum()  # …where the segmentation puts it
    from PIL import Image

    Image.fromarray(pixels).save(os.environ.get("RELAY_SCREENSHOT") or tmp_path / "shot.png")

    # a second load of the same view: the page reloads, the relay reads nothing upstream
    reads = relay.upstream_reads()
    webdriver.driver.refresh()
    again = screenshot(viewer)
    assert np.array_equal(again, pixels)
    assert relay.upstream_reads() == reads


#: the demo segment drawn in 3-D (a Voronoi tube through every z; x 160:292, y 36:160 voxels)
MESH_SEGMENT = 2654435761 * 20
MESH_CENTRE = (231, 99, 32)


@pytest.fixture(scope="module")
def services_relay(demo_dir: Path, tmp_path_factory: pytest.TempPathFactory
                   ) -> Iterator[RelayProcess]:
    """A relay serving the demo's level-0 em as a single-scale zarr (so its coarser levels
    are derived) and the demo's segmentation, which has no meshes of its own."""
    root = tmp_path_factory.mktemp("services")
    config = root / "relay.yaml"
    config.write_text(yaml.safe_dump({"cache": {"disk_dir": None}, "sources": [
        {"collection": "single", "experiment": "scale", "channel": "em", "kind": "zarr",
         "url": (demo_dir / "em.ome.zarr" / "0").as_uri(), "voxel_size": [4, 4, 40],
         "cuboid": [256, 256, 16]},
        {"collection": "demo", "experiment": "synthetic", "channel": "seg",
         "kind": "precomputed", "url": (demo_dir / "precomputed" / "seg").as_uri()},
    ]}))
    with RelayProcess(["--config", str(config)], log=root / "relay.log") as relay:
        yield relay


def _save(pixels: np.ndarray, name: str, tmp_path: Path) -> None:
    from PIL import Image

    directory = os.environ.get("RELAY_SCREENSHOT_DIR")
    Image.fromarray(pixels).save(Path(directory) / name if directory else tmp_path / name)


def test_a_single_scale_zarr_zoomed_out_shows_derived_levels(
        services_relay: RelayProcess, webdriver: Any, demo_dir: Path, tmp_path: Path) -> None:
    """At 4 voxels per screen pixel neuroglancer draws level 2, which the store does not have:
    every pixel is the relay's mean of the 4 × 4 stored voxels under it (rounded half up)."""
    from .test_pyramid import reference_mean

    relay = services_relay
    viewer = webdriver.viewer
    with viewer.txn() as s:
        _bare(s, "xy")
        s.layers.append(name="em", layer=neuroglancer.ImageLayer(
            source=f"precomputed://{relay.url}/precomputed/single/scale/em"))
        s.position = [512, 480, 32.5]
        s.cross_section_scale = 4  # four voxels per screen pixel
    pixels = screenshot(viewer)
    _save(pixels, "neuroglancer-derived.png", tmp_path)
    em = np.asarray(zarr.open_array(str(demo_dir / "em.ome.zarr" / "0"), mode="r")[32])
    level2 = reference_mean(reference_mean(em[None], (2, 2, 1)), (2, 2, 1))[0]
    # screen pixel (x, y) shows level-2 voxel (x - 32, y): the view's centre, x = 512, y = 480
    # at level 0, is pixel (160, 120); the volume is 256 level-2 voxels wide
    shown = pixels[:, 32:288, 0].astype(int)
    assert np.array_equal(shown, level2[:240, :256].astype(int))
    assert not np.array_equal(shown, em[2:960:4, 2:1024:4].astype(int))  # not a stored level
    metrics = relay.metrics()
    assert metrics["relay_derived_cuboids_total"] > 0


def test_a_segment_mesh_renders_in_3d(services_relay: RelayProcess, webdriver: Any,
                                      tmp_path: Path) -> None:
    relay = services_relay
    viewer = webdriver.viewer
    with viewer.txn() as s:
        _bare(s, "3d")
        s.layers.append(name="seg", layer=neuroglancer.SegmentationLayer(
            source=f"precomputed://{relay.url}/precomputed/demo/synthetic/seg",
            segments=[MESH_SEGMENT], segment_colors={MESH_SEGMENT: "#ff0000"},
            hide_segment_zero=True))
        s.show_slices = False  # the 3-D panel draws meshes only
        s.position = list(MESH_CENTRE)
        s.projection_orientation = [0.2, 0.3, 0.0, 0.9327379]
        s.projection_scale = 700
    pixels = screenshot(viewer)
    _save(pixels, "neuroglancer-mesh.png", tmp_path)
    red = (pixels[..., 0] > 100) & (pixels[..., 1] < 60) & (pixels[..., 2] < 60)
    # the camera looks at the segment's centre: the mesh covers the middle of the panel
    h, w = red.shape
    assert red.sum() > 0.02 * red.size
    assert red[h // 2 - 10:h // 2 + 10, w // 2 - 10:w // 2 + 10].mean() > 0.5
    metrics = relay.metrics()
    assert metrics["relay_mesh_manifests_total"] >= 1
    assert metrics["relay_mesh_fragments_made_total"] >= 1


def test_boss_source_over_https(demo_dir: Path, tmp_path: Path) -> None:
    """Neuroglancer's boss:// source (which refuses http hosts) against a relay with TLS:
    metadata from /latest, uint8 chunks as JPEG filmstrips; the browser is told to accept the
    test's self-signed certificate."""
    cert, key = self_signed(tmp_path)
    config = tmp_path / "relay.yaml"
    config.write_text(yaml.safe_dump({
        "server": {"tls_cert": str(cert), "tls_key": str(key)},
        "cache": {"disk_dir": None},
        "sources": demo_sources(demo_dir),
    }))
    relay = RelayProcess(["--config", str(config)], env={"HOME": str(tmp_path)})
    relay.url_scheme = "https"
    os.environ.setdefault("SE_OFFLINE", "true")
    neuroglancer.set_server_bind_address("127.0.0.1")
    with relay, neuroglancer.webdriver.Webdriver(
        headless=True, docker=True, browser_binary_path=CHROMIUM, window_size=(800, 600),
        print_logs=False,
        extra_command_line_args=["--enable-unsafe-swiftshader", "--ignore-certificate-errors",
                                 "--disable-background-networking", "--no-first-run"],
    ) as driver:
        viewer = driver.viewer
        with viewer.txn() as s:
            _bare(s, "xy")
            s.layers.append(name="em", layer=neuroglancer.ImageLayer(
                source=f"boss://https://127.0.0.1:{relay.port}/demo/synthetic/em"))
            s.position = [CENTER[0], CENTER[1], CENTER[2] + 0.5]
            s.cross_section_scale = 1
        pixels = screenshot(viewer)
    grey = pixels[..., 0].astype(int)
    truth = _truth_slice(demo_dir).astype(int)
    assert grey.std() > 10
    assert np.abs(grey - truth).mean() < 6.0  # JPEG: close, not exact
