"""intern's own integration suites for BossDB, from the installed wheel, run unmodified against
relays (issue 26): ``int_test_volume_v1`` (cutouts, writes, to_black, ids, bounding boxes,
reserve) and ``int_test_metadata_v1`` (metadata key/values of a collection, an experiment and
a channel).

Only what the suites do to BossDB's resources is replaced: ``create_project`` and
``delete_project`` (a relay serves what its config names; resource creation is refused, README)
become no-ops, and the suites' random name suffixes are fixed so the config can name the
stores. One mend is the wheel's own: the suites build ``CoordinateFrameResource`` with an older
signature (a time step and its unit after the voxel unit, which intern 1.4.2 takes as
``creator`` and ``raw``, so ``setUpClass`` fails before any request); the two extra arguments
are dropped — writable OME-Zarr stores of the suites' frames, time samples and dtypes. The tests the
suites skip "because indexing is disabled" at BossDB (ids across cuboid lines, loose and tight
bounding boxes) are run too: the relay computes them from the voxels.

Each suite runs through one relay over the stores, through a chain of two (a relay in front of
that one), and on another member of the first one's fleet (sharing its Redis tier and its
durable state), with the same results.
"""

from __future__ import annotations

import random
import unittest
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zarr
from intern.remote.boss import BossRemote
from intern.remote.boss.tests import int_test_metadata_v1, int_test_volume_v1
from intern.resource.boss.resource import CoordinateFrameResource

from .servers import RedisServer, RelayProcess, relay_over, write_config

#: the suffix ``random.randint`` gives the suites' names while they run
SUFFIX = 4242


def _ome_zarr(path: Path, shape_tzyx: tuple[int, int, int, int], dtype: str) -> None:
    """An empty OME-Zarr (t, z, y, x), chunked as BossDB's cuboids (512 × 512 × 16)."""
    group = zarr.open_group(str(path), mode="w", zarr_format=3)
    group.create_array("0", shape=shape_tzyx, chunks=(1, 16, 512, 512), dtype=dtype,
                       fill_value=0)
    group.attrs["ome"] = {"version": "0.5", "multiscales": [{
        "axes": [{"name": a, "type": "time" if a == "t" else "space"} for a in "tzyx"],
        "datasets": [{"path": "0", "coordinateTransformations": [
            {"type": "scale", "scale": [1.0, 1.0, 1.0, 1.0]}]}]}]}


def _sources(root: Path) -> list[dict[str, Any]]:
    """The stores the suites' ``create_project`` calls would have made, as a config."""
    sources = []
    volume = f"collection2323{SUFFIX}"
    for channel, dtype in (("myVolChan", "uint8"), ("myVol16bitChan", "uint16"),
                           ("annVolChan2", "uint64"), ("annRegionChan2", "uint64"),
                           ("annRegionChan3", "uint64")):
        path = root / f"{channel}.ome.zarr"
        _ome_zarr(path, (10, 100, 2048, 2048), dtype)  # BestFrame: 2048 × 2048 × 100, t 10
        sources.append({"collection": volume, "experiment": "exp2323x2", "channel": channel,
                        "kind": "zarr", "url": path.as_uri(), "writable": True,
                        "downsample": "none"})
    path = root / "meta.ome.zarr"
    _ome_zarr(path, (1, 3, 10, 10), "uint8")  # MetaFrame: 10 × 10 × 3
    sources.append({"collection": f"coll2309_{SUFFIX}", "experiment": "myMetaExp2309",
                    "channel": "myTestMetaChan", "kind": "zarr", "url": path.as_uri(),
                    "writable": True})
    return sources


@pytest.fixture(scope="module")
def relays(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, RelayProcess]]:
    """The institute relay over the stores; a laptop relay in front of it; and a second
    member of the institute's fleet (the same stores, Redis tier and state_dir)."""
    root = tmp_path_factory.mktemp("intern-suites")
    sources = _sources(root)
    with RedisServer(root / "redis") as redis:
        fleet = [RelayProcess(["--config", str(write_config(
            root / f"{name}.yaml", sources, root / f"{name}-cache", redis_url=redis.url,
            server={"state_dir": str(root / "fleet-state")}))], log=root / f"{name}.log").start()
            for name in ("institute", "member")]
        laptop = relay_over(root, [{"collection": "*", "kind": "boss", "url": fleet[0].url,
                                    "writable": True}], "laptop").start()
        yield {"one relay": fleet[0], "two relays": laptop, "fleet member": fleet[1]}
        for relay in (laptop, *fleet):
            relay.stop()


def _unskipped(case: type[unittest.TestCase]) -> type[unittest.TestCase]:
    """``case`` with the tests BossDB skips ("currently indexing disabled") run too."""
    skipped = {name: getattr(case, name).__wrapped__ for name in dir(case)
               if name.startswith("test") and getattr(getattr(case, name),
                                                      "__unittest_skip__", False)}
    return type(case.__name__, (case,), skipped)


def _frame(*args: Any) -> CoordinateFrameResource:
    """The suites' call (name … voxel_unit, time_step, time_step_unit) on 1.4.2's signature."""
    return CoordinateFrameResource(*args[:10])


def _run(case: type[unittest.TestCase], relay: RelayProcess, directory: Path,
         monkeypatch: pytest.MonkeyPatch) -> unittest.TestResult:
    (directory / "test.cfg").write_text(
        f"[Default]\nprotocol = http\nhost = {relay.host}\ntoken = public\n")
    monkeypatch.chdir(directory)  # the suites read ./test.cfg
    monkeypatch.setattr(random, "randint", lambda a, b: SUFFIX)
    monkeypatch.setattr(BossRemote, "create_project", lambda self, resource: resource)
    monkeypatch.setattr(BossRemote, "delete_project", lambda self, resource: None)
    for module in (int_test_metadata_v1, int_test_volume_v1):
        monkeypatch.setattr(module, "CoordinateFrameResource", _frame)
    suite = unittest.defaultTestLoader.loadTestsFromTestCase(_unskipped(case))
    with open(directory / f"{case.__name__}.log", "w") as log:
        return unittest.TextTestRunner(stream=log, verbosity=2).run(suite)


def _report(result: unittest.TestResult) -> str:
    return "\n".join(f"{test.id()}: {trace.strip().splitlines()[-1]}"
                     for test, trace in result.failures + result.errors)


@pytest.mark.parametrize("via", ["one relay", "two relays", "fleet member"])
def test_intern_metadata_suite_passes(via: str, relays: dict[str, RelayProcess],
                                      tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(int_test_metadata_v1.MetadataServiceTest_v1, relays[via], tmp_path,
                  monkeypatch)
    assert result.testsRun == 3 and not result.skipped
    assert result.wasSuccessful(), _report(result)


@pytest.mark.parametrize("via", ["one relay", "two relays", "fleet member"])
def test_intern_volume_suite_passes_with_its_skipped_tests(
        via: str, relays: dict[str, RelayProcess], tmp_path: Path,
        monkeypatch: pytest.MonkeyPatch) -> None:
    result = _run(int_test_volume_v1.VolumeServiceTest_v1, relays[via], tmp_path, monkeypatch)
    assert result.testsRun == 42 and not result.skipped
    assert result.wasSuccessful(), _report(result)
