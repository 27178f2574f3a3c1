"""The shipped configs load, and config/laptop.yaml in front of config/onprem.yaml is a working
chain by configuration alone."""

from __future__ import annotations

from pathlib import Path

import blosc
import httpx
import numpy as np
import pytest
import zarr

from relay.config import load_settings

from .servers import RelayProcess

CONFIG = Path(__file__).resolve().parent.parent / "config"


@pytest.mark.parametrize("name", ["example.yaml", "laptop.yaml", "onprem.yaml"])
def test_shipped_configs_validate(name: str) -> None:
    settings = load_settings(CONFIG / name)
    assert settings.sources


def test_laptop_in_front_of_onprem(demo_dir: Path, tmp_path: Path) -> None:
    lab_env = {"RELAY_LAB_DATA": demo_dir.as_uri(), "RELAY_CACHE_DIR": str(tmp_path / "lab"),
               "RELAY_SERVER__HOST": "127.0.0.1"}
    with RelayProcess(["--config", str(CONFIG / "onprem.yaml")], env=lab_env) as lab, \
         RelayProcess(["--config", str(CONFIG / "laptop.yaml")],
                      env={"RELAY_LAB_URL": lab.url,
                           "RELAY_CACHE_DIR": str(tmp_path / "laptop")}) as laptop:
        channel = httpx.get(f"{laptop.url}/v1/collection/lab/experiment/synthetic/channel/em/")
        assert channel.json()["datatype"] == "uint8"
        response = httpx.get(f"{laptop.url}/v1/cutout/lab/synthetic/em/1/100:400/0:300/10:20/",
                             timeout=60)
        assert response.status_code == 200
        got = np.frombuffer(blosc.decompress(response.content), np.uint8).reshape(10, 300, 300)
        expected = zarr.open_array(str(demo_dir / "em.ome.zarr" / "1"), mode="r")[10:20, :300,
                                                                                  100:400]
        np.testing.assert_array_equal(got, expected)
