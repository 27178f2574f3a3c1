"""The planner covers every requested voxel inside the bounds exactly once, in bounds."""

from __future__ import annotations

import numpy as np
from hypothesis import example, given, settings
from hypothesis import strategies as st

from relay.geometry import Box, Vec3
from relay.planner import count_cells, cuboid_box, exact_cuboid, plan


@st.composite
def scenarios(draw: st.DrawFn) -> tuple[Box, Vec3, Vec3, Box]:
    cuboid = Vec3(*(draw(st.integers(1, 9)) for _ in range(3)))
    origin = Vec3(*(draw(st.integers(-5, 5)) for _ in range(3)))
    lo = [draw(st.integers(-10, 10)) for _ in range(3)]
    bounds = Box(Vec3(*lo), Vec3(*(a + draw(st.integers(1, 30)) for a in lo)))
    rlo = [draw(st.integers(-15, 35)) for _ in range(3)]
    request = Box(Vec3(*rlo), Vec3(*(a + draw(st.integers(1, 30)) for a in rlo)))
    return request, cuboid, origin, bounds


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_every_voxel_inside_the_bounds_is_covered_exactly_once(
    scenario: tuple[Box, Vec3, Vec3, Box],
) -> None:
    request, cuboid, origin, bounds = scenario
    coverage = np.zeros(request.shape_zyx, np.int32)
    for item in plan(request, cuboid, origin, bounds):
        # the fetched box is one grid cell clipped to the bounds
        assert bounds.contains(item.box)
        cell_start = Vec3(*(o + i * c for o, i, c in zip(origin, item.index, cuboid, strict=True)))
        assert Box(cell_start, cell_start + cuboid).contains(item.box)
        # slices are in range of their arrays and the same size on both sides
        src_shape = tuple(s.stop - s.start for s in item.src)
        dst_shape = tuple(s.stop - s.start for s in item.dst)
        assert src_shape == dst_shape
        assert all(0 <= s.start < s.stop <= n for s, n in zip(item.src, item.box.shape_zyx,
                                                               strict=True))
        assert all(0 <= s.start < s.stop <= n for s, n in zip(item.dst, request.shape_zyx,
                                                               strict=True))
        coverage[item.dst] += 1
    inside = request.intersect(bounds)
    expected = np.zeros(request.shape_zyx, np.int32)
    if inside is not None:
        expected[inside.zyx_slices(request.start)] = 1
    np.testing.assert_array_equal(coverage, expected)


@settings(max_examples=200, deadline=None)
@given(scenarios())
def test_pasting_cuboids_reproduces_the_volume(scenario: tuple[Box, Vec3, Vec3, Box]) -> None:
    request, cuboid, origin, bounds = scenario
    rng = np.random.default_rng(0)
    volume = rng.integers(1, 255, bounds.shape_zyx, dtype=np.uint8)
    out = np.zeros(request.shape_zyx, np.uint8)
    for item in plan(request, cuboid, origin, bounds):
        fetched = volume[item.box.zyx_slices(bounds.start)]
        out[item.dst] = fetched[item.src]
    inside = request.intersect(bounds)
    expected = np.zeros(request.shape_zyx, np.uint8)
    if inside is not None:
        expected[inside.zyx_slices(request.start)] = volume[inside.zyx_slices(bounds.start)]
    np.testing.assert_array_equal(out, expected)


def test_partial_trailing_cuboid_is_kept() -> None:
    bounds = Box.of((0, 0, 0), (2000, 1000, 100))
    items = list(plan(Box.of((1536, 512, 96), (2000, 1000, 100)), Vec3(512, 512, 16),
                      Vec3(0, 0, 0), bounds))
    assert [i.box for i in items] == [Box.of((1536, 512, 96), (2000, 1000, 100))]
    assert items[0].index == Vec3(3, 1, 6)


@st.composite
def cells(draw: st.DrawFn) -> tuple[Box, Vec3, Vec3, Box]:
    """Scenarios whose request is often exactly one (clipped) grid cell."""
    request, cuboid, origin, bounds = draw(scenarios())
    if draw(st.booleans()):
        index = Vec3(*(draw(st.integers(-2, 6)) for _ in range(3)))
        cell = cuboid_box(index, cuboid, origin, bounds)
        if cell is not None:
            request = cell
    return request, cuboid, origin, bounds


@given(cells())
@example((Box.of((0, 0, 0), (1, 1, 1)), Vec3(2, 1, 1), Vec3(1, 0, 0),
          Box.of((0, 0, 0), (1, 1, 1))))  # a cell clipped at its start by the bounds
@settings(max_examples=300)
def test_exact_cuboid_agrees_with_the_plan(scenario: tuple[Box, Vec3, Vec3, Box]) -> None:
    request, cuboid, origin, bounds = scenario
    items = list(plan(request, cuboid, origin, bounds))
    single = len(items) == 1 and items[0].box == request
    found = exact_cuboid(request, cuboid, origin, bounds)
    assert (found is not None) == single
    if found is not None:
        assert found == items[0]


@given(scenarios())
def test_count_cells_agrees_with_the_plan(scenario: tuple[Box, Vec3, Vec3, Box]) -> None:
    request, cuboid, origin, bounds = scenario
    assert count_cells(request, cuboid, origin, bounds) == len(list(plan(request, cuboid,
                                                                         origin, bounds)))
