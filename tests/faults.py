"""A BossDB look-alike on loopback that misbehaves on cue, for HTTP-seam fault tests.

It describes one uint8 channel ``c/e/ch`` of 64×64×8 voxels (one 512×512×16 Boss cuboid,
clipped) and answers cutouts by following ``script``: one behaviour per cutout request, then
"ok". Voxel values depend on the caller's Authorization, so tests can tell whose data came back.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import zlib
from collections import deque
from typing import Any

import blosc
import numpy as np

SHAPE_XYZ = (64, 64, 8)

CHANNEL = {"name": "ch", "public": True, "description": "", "experiment": "e",
           "default_time_sample": 0, "type": "image", "base_resolution": 0, "datatype": "uint8",
           "creator": "faults", "sources": [], "downsample_status": "NOT_DOWNSAMPLED",
           "related": [], "storage_type": "spdb", "bucket": None, "cv_path": None}
EXPERIMENT = {"channels": ["ch"], "name": "e", "public": True, "description": "",
              "collection": "c", "coord_frame": "cf", "num_hierarchy_levels": 1,
              "hierarchy_method": "anisotropic", "num_time_samples": 1, "time_step": None,
              "time_step_unit": "nanoseconds", "creator": "faults"}
COORD = {"name": "cf", "description": "", "x_start": 0, "x_stop": SHAPE_XYZ[0], "y_start": 0,
         "y_stop": SHAPE_XYZ[1], "z_start": 0, "z_stop": SHAPE_XYZ[2], "x_voxel_size": 4.0,
         "y_voxel_size": 4.0, "z_voxel_size": 40.0, "voxel_unit": "nanometers"}
DOWNSAMPLE = {"status": "NOT_DOWNSAMPLED", "num_hierarchy_levels": 1,
              "voxel_size": {"0": [4.0, 4.0, 40.0]}, "extent": {"0": list(SHAPE_XYZ)},
              "cuboid_size": {"0": [512, 512, 16]}}
METADATA = {
    "/v1/collection/": {"collections": ["c"]},
    "/v1/collection/c/": {"name": "c", "public": True, "description": "",
                          "experiments": ["e"], "creator": "faults"},
    "/v1/collection/c/experiment/": {"experiments": ["e"]},
    "/v1/collection/c/experiment/e/": EXPERIMENT,
    "/v1/collection/c/experiment/e/channel/": {"channels": ["ch"]},
    "/v1/collection/c/experiment/e/channel/ch/": CHANNEL,
    "/v1/coord/": {"coords": ["cf"]},
    "/v1/coord/cf/": COORD,
    "/v1/downsample/c/e/ch/": DOWNSAMPLE,
}


@functools.cache
def bomb() -> bytes:
    """2 GiB less a little of zeros as one Blosc1 frame (8 MiB): np.zeros maps the zero page,
    so making it costs CPU, not memory."""
    return bytes(blosc.compress(np.zeros(2**31 - 64, np.uint8), typesize=1, clevel=9))


def voxels_for(authorization: str | None) -> np.ndarray:
    """What this server holds for a caller: a gradient plus a per-credential offset."""
    z, y, x = np.mgrid[0:SHAPE_XYZ[2], 0:SHAPE_XYZ[1], 0:SHAPE_XYZ[0]]
    offset = zlib.crc32((authorization or "").encode()) % 200
    voxels: np.ndarray = ((x + 2 * y + 3 * z + offset) % 251 + 1).astype(np.uint8)  # never 0
    return voxels


class FaultServer:
    def __init__(self) -> None:
        self.script: deque[str] = deque()
        self.cutouts = 0
        self.authorizations: list[str | None] = []
        self.targets: list[str] = []  # every request target (path and query) received
        self.cookies: list[str | None] = []  # the Cookie header of every request
        self.vias: list[str | None] = []  # the Via header of every request
        self.set_cookie = False  # when True, every answer sets a session cookie
        #: metadata paths answered with other JSON, or with a behaviour ("endless")
        self.metadata: dict[str, Any] = {}
        self.sent = 0  # bytes of hostile bodies written (endless, huge)
        self._server: asyncio.Server | None = None
        self._stall = asyncio.Event()
        self.cutout_seen = asyncio.Event()  # set when the first cutout request arrives
        #: the "held-…" behaviours send half a frame, then wait for this before the rest
        self.proceed = asyncio.Event()

    @property
    def url(self) -> str:
        assert self._server is not None
        port = self._server.sockets[0].getsockname()[1]
        return f"http://127.0.0.1:{port}"

    async def __aenter__(self) -> FaultServer:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self._server is not None
        self._stall.set()
        self._server.close()
        await self._server.wait_closed()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request_line = (await reader.readline()).decode()
            headers: dict[str, str] = {}
            while (line := (await reader.readline()).decode().strip()):
                name, _, value = line.partition(":")
                headers[name.strip().lower()] = value.strip()
            target = request_line.split(" ")[1]
            self.targets.append(target)
            self.cookies.append(headers.get("cookie"))
            self.vias.append(headers.get("via"))
            path = target.split("?")[0]
            await self._answer(path, headers.get("authorization"), writer)
        except (ConnectionError, IndexError):
            pass
        finally:
            if not writer.is_closing():
                writer.close()

    async def _answer(self, path: str, auth: str | None, writer: asyncio.StreamWriter) -> None:
        if not path.endswith("/"):
            path += "/"
        if self.metadata.get(path) == "endless":
            await self._endless(writer, "application/json", b'{"name": "' + b"x" * 65536)
            return
        if path in METADATA or path in self.metadata:
            body = self.metadata.get(path, METADATA.get(path))
            self._send(writer, 200, "application/json", json.dumps(body).encode())
            return
        if not path.startswith("/v1/cutout/c/e/ch/0/"):
            self._send(writer, 404, "application/json", json.dumps(
                {"status": 404, "code": 4000, "message": "Channel not found"}).encode())
            return
        self.cutouts += 1
        self.cutout_seen.set()
        self.authorizations.append(auth)
        behaviour = self.script.popleft() if self.script else "ok"
        ranges = [tuple(map(int, r.split(":"))) for r in path.split("/")[7:10]]
        (x0, x1), (y0, y1), (z0, z1) = ranges
        data = voxels_for(auth)[z0:z1, y0:y1, x0:x1]
        body = blosc.compress(np.ascontiguousarray(data).tobytes(), typesize=1)
        if behaviour == "ok":
            self._send(writer, 200, "application/blosc", body)
        elif behaviour == "500":
            self._send(writer, 500, "text/plain", b"internal error")
        elif behaviour == "503":
            self._send(writer, 503, "text/plain", b"busy", {"Retry-After": "1"})
        elif behaviour == "429":
            self._send(writer, 429, "application/json", b'{"detail": "slow down"}',
                       {"Retry-After": "0"})
        elif behaviour == "reset":  # headers and half the body, then a TCP reset
            self._send(writer, 200, "application/blosc", body[: len(body) // 2],
                       length=len(body))
            await writer.drain()
            writer.transport.abort()
        elif behaviour == "truncate":  # half the body, then a clean close
            self._send(writer, 200, "application/blosc", body[: len(body) // 2],
                       length=len(body))
        elif behaviour.startswith("held-"):  # half the frame; the rest once told to proceed
            self._send(writer, 200, "application/blosc", body[: len(body) // 2],
                       length=len(body))
            await writer.drain()
            await self.proceed.wait()
            rest = body[len(body) // 2:]
            if behaviour == "held-corrupt":  # the right length, the rest of it garbage
                writer.write(b"\xff" * len(rest))
            elif behaviour == "held-reset":
                writer.transport.abort()
            elif behaviour == "held-truncate":  # a clean close, short of the length
                pass
            else:
                raise AssertionError(behaviour)
        elif behaviour == "other":  # the same voxels in another frame of the same length
            # (unshuffled: for one-byte voxels only the header's flags differ)
            self._send(writer, 200, "application/blosc", blosc.compress(
                np.ascontiguousarray(data).tobytes(), typesize=1, shuffle=blosc.NOSHUFFLE))
        elif behaviour == "short":  # a valid Blosc frame of the wrong length
            self._send(writer, 200, "application/blosc", blosc.compress(b"\x01" * 100))
        elif behaviour == "html":
            self._send(writer, 200, "text/html", b"<html><body>Maintenance</body></html>")
        elif behaviour == "stall":  # never answers (until the server closes)
            await self._stall.wait()
        elif behaviour == "slow":  # answers, after a while
            await self._pause(1.5)
            self._send(writer, 200, "application/blosc", body)
        elif behaviour == "slow-500":  # fails, after a while (a leader others wait on)
            await self._pause(1.5)
            self._send(writer, 500, "text/plain", b"internal error")
        elif behaviour == "trickle":  # slow-loris: a byte every 50 ms, never a read timeout
            self._send(writer, 200, "application/blosc", b"", length=len(body))
            for byte in body:
                if self._stall.is_set():
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                await self._pause(0.05)
        elif behaviour == "endless":  # a body that never ends (chunked, no length)
            await self._endless(writer, "application/blosc", b"\x00" * 65536)
        elif behaviour == "huge":  # announces 10 GB, then sends for as long as it is read
            self._send(writer, 200, "application/blosc", b"", length=10**10)
            await self._stream(writer, b"\x00" * 65536)
        elif behaviour == "bomb":  # a small, valid Blosc frame of 2 GiB of zeros
            self._send(writer, 200, "application/blosc", bomb())
        elif behaviour == "boss-400":
            self._send(writer, 400, "application/json", json.dumps(
                {"status": 400, "code": 1001, "message": "Incorrect cutout arguments"}).encode())
        else:
            raise AssertionError(behaviour)

    async def _endless(self, writer: asyncio.StreamWriter, content_type: str,
                       block: bytes) -> None:
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
                     "Transfer-Encoding: chunked\r\n\r\n".encode())
        await self._stream(writer, b"%x\r\n" % len(block) + block + b"\r\n")

    async def _stream(self, writer: asyncio.StreamWriter, block: bytes) -> None:
        """Write ``block`` again and again until the reader goes away (or 2 GiB, a bound)."""
        while self.sent < 2**31 and not self._stall.is_set():
            writer.write(block)
            self.sent += len(block)
            await writer.drain()

    async def _pause(self, seconds: float) -> None:
        """Behave slowly for ``seconds``, or less if the server is closing."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stall.wait(), seconds)

    def _send(self, writer: asyncio.StreamWriter, status: int, content_type: str, body: bytes,
              extra: dict[str, str] | None = None, length: int | None = None) -> None:
        extra = dict(extra or {})
        if self.set_cookie:
            extra["Set-Cookie"] = f"sessionid=s{self.cutouts}; Path=/"
        lines = [f"HTTP/1.1 {status} X", f"Content-Type: {content_type}",
                 f"Content-Length: {len(body) if length is None else length}",
                 "Connection: close", *(f"{k}: {v}" for k, v in extra.items())]
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + body)


def metadata_json(path: str) -> Any:
    return METADATA[path]
