"""P3's fairer comparator: the store's own library and the relay's encoding, served over HTTP
by a bare Starlette app (what the relay adds beyond HTTP itself: its plan, cache and checks).

    python bench/direct_server.py PORT KIND URL
serves GET /cutout/{x0}/{y0}/{z0} (a 512×512×16 box read from the zarr or precomputed store
at URL, Blosc-encoded as the relay encodes: lz4, level 5, byte shuffle) and GET /hello.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Callable

import blosc
import numpy as np
import uvicorn
import zarr
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route


def direct_reader(kind: str, url: str) -> Callable[[int, int, int], np.ndarray]:
    """Read a 512×512×16 box at (x0, y0, z0) as Z, Y, X with the store's own library."""
    if kind == "zarr":
        array = zarr.open_array(url, mode="r")
        return lambda x0, y0, z0: np.asarray(array[z0:z0 + 16, y0:y0 + 512, x0:x0 + 512])
    from cloudvolume import CloudVolume

    volume = CloudVolume(url, progress=False)
    return lambda x0, y0, z0: np.asarray(
        volume[x0:x0 + 512, y0:y0 + 512, z0:z0 + 16])[..., 0].transpose(2, 1, 0)


def read_and_encode(read: Callable[[int, int, int], np.ndarray], x0: int, y0: int,
                    z0: int) -> bytes:
    data = np.ascontiguousarray(read(x0, y0, z0))
    return bytes(blosc.compress(data, typesize=data.itemsize, clevel=5, cname="lz4"))


def app(kind: str, url: str) -> Starlette:
    read = direct_reader(kind, url)

    async def cutout(request: Request) -> Response:
        p = request.path_params
        # in a worker thread, as the relay reads and encodes a 4 MiB cuboid
        body = await asyncio.to_thread(read_and_encode, read, p["x0"], p["y0"], p["z0"])
        return Response(body, media_type="application/blosc")

    async def hello(request: Request) -> Response:
        return Response(b'{"hello":"world"}', media_type="application/json")

    return Starlette(routes=[Route("/cutout/{x0:int}/{y0:int}/{z0:int}", cutout),
                             Route("/hello", hello)])


if __name__ == "__main__":
    uvicorn.run(app(sys.argv[2], sys.argv[3]), host="127.0.0.1", port=int(sys.argv[1]),
                log_level="warning", access_log=False)
