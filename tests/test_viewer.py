"""The viewer in the box: the index page lists the catalog, and its "open in neuroglancer" link
opens neuroglancer's own client, served by the relay from the installed package, which renders
the demo's voxels (headless Chromium); with ``server.tokens`` the browser's token travels in a
cookie set by ``/?token=``; through a chain the laptop's page lists the institute's data."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import neuroglancer
import neuroglancer.webdriver
import numpy as np
import pytest
import zarr
from PIL import Image
from starlette.testclient import TestClient

from relay.app import create_app
from relay.config import Settings
from relay.demo import demo_sources

from .servers import RelayProcess, wait_for, write_config
from .test_neuroglancer import CHROMIUM

TOKEN = "s3cret-token"


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    os.environ.setdefault("SE_OFFLINE", "true")
    neuroglancer.set_server_bind_address("127.0.0.1")
    driver = neuroglancer.webdriver.Webdriver(
        headless=True, docker=True, browser_binary_path=CHROMIUM, window_size=(800, 600),
        print_logs=False,
        extra_command_line_args=["--enable-unsafe-swiftshader", "--disable-background-networking",
                                 "--disable-component-update", "--no-first-run"])
    yield driver.driver
    driver.__exit__(None, None, None)


def _relay(demo_dir: Path, root: Path, **server: Any) -> RelayProcess:
    config = write_config(root / "relay.yaml", demo_sources(demo_dir), None, server=server)
    return RelayProcess(["--config", str(config)], log=root / "relay.log")


def _links(driver: Any) -> list[tuple[str, str]]:
    from selenium.webdriver.common.by import By

    return [(a.text, a.get_attribute("href")) for a in driver.find_elements(By.TAG_NAME, "a")]


def _em_link(driver: Any) -> str:
    return next(href for text, href in _links(driver)
                if text == "open" and "synthetic%2Fem%22" in href)


def _rendered(driver: Any, truth: np.ndarray, within: float = 60.0) -> np.ndarray:
    """The screenshot once its middle shows ``truth`` (one voxel a pixel, centred), found
    within a few pixels of the window's centre (the viewer's bars shift its panel)."""
    def matches() -> bool:
        shot = np.asarray(Image.open(_png(driver)).convert("RGB")).astype(int)
        h, w = shot.shape[:2]
        grey = shot[..., 0]
        size = 120
        want = truth[512 - size // 2:512 + size // 2, 512 - size // 2:512 + size // 2]
        best = min(
            np.abs(grey[h // 2 + dy - size // 2:h // 2 + dy + size // 2,
                        w // 2 + dx - size // 2:w // 2 + dx + size // 2] - want).mean()
            for dy in range(-40, 41) for dx in range(-6, 7))
        return bool(best < 2.0)

    wait_for(matches, within, "the viewer to show the demo's voxels")
    return np.asarray(Image.open(_png(driver)))


def _png(driver: Any) -> Any:
    import io

    return io.BytesIO(driver.get_screenshot_as_png())


def _save(driver: Any, name: str, tmp_path: Path) -> None:
    directory = os.environ.get("RELAY_SCREENSHOT_DIR")
    target = Path(directory) / name if directory else tmp_path / name
    target.write_bytes(driver.get_screenshot_as_png())


def _truth(demo_dir: Path) -> np.ndarray:
    return np.asarray(zarr.open_array(str(demo_dir / "em.ome.zarr" / "0"), mode="r")[32])


def test_the_index_lists_the_demo_and_its_link_opens_a_viewer(
        demo_dir: Path, browser: Any, tmp_path: Path) -> None:
    with _relay(demo_dir, tmp_path) as relay:
        browser.get(relay.url + "/")
        assert "relay at 127.0.0.1" in browser.title
        page = browser.page_source
        for text in ("demo / synthetic", "em", "seg", "prob", "uint8 image",
                     "uint64 annotation", "0:1024, 0:1024, 0:64", "BossRemote", "CloudVolume"):
            assert text in page, text
        _save(browser, "viewer-index.png", tmp_path)
        links = _links(browser)
        experiment = next(href for text, href in links if text == "open in neuroglancer")
        assert "/viewer/v/relay/#!" in experiment
        # one channel: the em image, one voxel a screen pixel at the volume's middle
        browser.get(_em_link(browser))
        _rendered(browser, _truth(demo_dir))
        assert relay.metrics()['relay_request_seconds_count{outcome="upstream",'
                               'route="precomputed_chunk"}'] > 0
        # the whole experiment: image and segmentation layers together
        browser.get(experiment)
        wait_for(lambda: relay.metrics().get(
            'relay_request_seconds_count{outcome="upstream",route="precomputed_chunk"}', 0) > 2,
            60, "chunks of the segmentation too")
        _save(browser, "viewer-neuroglancer.png", tmp_path)
        browser.get("about:blank")  # closes the client's event stream before the relay stops


def test_with_tokens_the_browser_passes_one_in_a_cookie(
        demo_dir: Path, browser: Any, tmp_path: Path) -> None:
    with _relay(demo_dir, tmp_path, tokens=[TOKEN]) as relay:
        assert httpx.get(relay.url + "/").status_code == 401
        browser.get(relay.url + f"/?token={TOKEN}")  # sets the cookie
        browser.get(_em_link(browser))
        _rendered(browser, _truth(demo_dir))
        browser.get("about:blank")


def test_the_cookie_is_only_a_listed_token_and_only_for_reads(demo_dir: Path) -> None:
    settings = Settings(sources=demo_sources(demo_dir), cache={"disk_dir": None},
                        server={"tokens": [TOKEN]})
    with TestClient(create_app(settings), base_url="http://localhost") as client:
        assert client.get("/?token=wrong").status_code == 401
        # finding 9 of issue 25: the token leaves the URL at once (a redirect that sets the
        # cookie), and no page of the index sends a Referer
        page = client.get(f"/?token={TOKEN}&x=1", follow_redirects=False)
        assert page.status_code == 303 and page.headers["location"] == "/?x=1"
        assert page.headers["referrer-policy"] == "no-referrer"
        cookie = page.headers["set-cookie"]
        assert "relay_token=" in cookie and "HttpOnly" in cookie and "SameSite=strict" in cookie
        index = client.get("/")
        assert index.status_code == 200 and index.headers["referrer-policy"] == "no-referrer"
        chunk = "/precomputed/demo/synthetic/em/0/0-512_0-512_0-16"
        assert client.get(chunk).status_code == 200  # the client kept the cookie
        client.cookies.clear()
        client.cookies.set("relay_token", "wrong")
        assert client.get(chunk).status_code == 401
        client.cookies.clear()
        client.cookies.set("relay_token", TOKEN)
        assert client.get(chunk).status_code == 200
        assert client.post(chunk).status_code == 401  # a cookie never authorises a write
        # a header, when given, is what counts
        assert client.get(chunk, headers={"Authorization": "Token wrong"}).status_code == 401


def test_through_a_chain_the_laptop_lists_the_institutes_data(demo_dir: Path,
                                                                tmp_path: Path) -> None:
    with _relay(demo_dir, tmp_path) as institute:
        config = write_config(tmp_path / "laptop.yaml",
                              [{"collection": "*", "kind": "boss", "url": institute.url}], None)
        with RelayProcess(["--config", str(config)], log=tmp_path / "laptop.log") as laptop:
            page = httpx.get(laptop.url + "/", timeout=60).text
            assert "demo / synthetic" in page and "uint64 annotation" in page
            assert f"precomputed%3A%2F%2Fhttp%3A%2F%2F127.0.0.1%3A{laptop.port}%2F" in page
            viewer = httpx.get(laptop.url + "/viewer/v/relay/", timeout=60)
            assert viewer.status_code == 200 and "<title>neuroglancer</title>" in viewer.text
