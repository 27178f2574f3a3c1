"""Wire encodings of a cutout, and the packed form of a cuboid in the cache.

This module is the only user of ``blosc`` (python-blosc, Blosc1: the frame format intern's
``blosc.decompress`` reads; a Blosc2 frame would not decode there) and of ``isal`` (ISA-L's
deflate: zlib and gzip streams any inflater reads, made 15–20× faster than zlib's level 1 at
the same size; docs/performance.md).

Wire encodings (BossDB's ``bossspatialdb/renderers.py`` and ``parsers.py``; intern's
``service/boss/v1/volume.py`` decodes them), all of a C-order Z,Y,X (or T,Z,Y,X) array:
- ``application/blosc``: one Blosc1 frame of the raw bytes; the default for a missing Accept.
- ``application/blosc-python``: ``blosc.pack_array`` (pickle inside; an uploaded one is read
  by an unpickler that can make nothing but a numpy array: ``decode_upload``).
- ``application/npygz``: zlib (RFC 1950, not gzip) of ``np.save`` bytes.
- ``image/jpeg``: uint8 3-D only; the z slices stacked vertically into one grey image.

And the precomputed dialect's ``compressed_segmentation`` chunks (neuroglancer's
``src/sliceview/compressed_segmentation/README.md``; the maintained ``compressed-segmentation``
package encodes them, cloud-volume, tensorstore and neuroglancer decode them).
"""

from __future__ import annotations

import io
import math
import os
import pickle
import re
import struct
from enum import StrEnum
from typing import Any

import blosc
import compressed_segmentation
import numpy as np
from isal import igzip, isal_zlib
from PIL import Image

from .errors import (
    DataDimensionMismatch,
    DatatypeMismatch,
    NotAcceptable,
    RequestTooLarge,
    Unsupported4D,
    UnsupportedMediaType,
)

__all__ = [
    "CSEG_BLOCK",
    "CSEG_DTYPES",
    "DTYPES",
    "MediaType",
    "blosc_sizes",
    "check_encodable",
    "check_jpeg",
    "crc32",
    "decode_blosc",
    "decode_upload",
    "encode",
    "encode_compressed_segmentation",
    "encode_picture",
    "encoding_bytes",
    "gzip_bytes",
    "negotiate",
    "pack_cuboid",
    "pack_frame",
    "packed_blosc_frame",
    "packed_fetched_at",
    "packed_header",
    "unpack_cuboid",
    "upload_media",
]

# Release the GIL while (de)compressing so encodes in worker threads overlap request handling.
blosc.set_releasegil(True)
_THREADS = max(1, min(4, os.cpu_count() or 1))
#: With the GIL released, python-blosc starts its threads afresh for every call: below a few
#: MiB that costs more than it saves (docs/performance.md has the figures).
_THREADED_BYTES = 4 * 2**20


def _threads_for(nbytes: int) -> None:
    # A process-wide setting in python-blosc: a call racing another may run with the other's
    # count, which changes its speed, never its output (Blosc splits blocks by size alone).
    blosc.set_nthreads(_THREADS if nbytes >= _THREADED_BYTES else 1)

#: The datatypes BossDB clients accept (intern rejects uint32).
DTYPES: dict[str, np.dtype[np.unsignedinteger]] = {
    "uint8": np.dtype("<u1"),
    "uint16": np.dtype("<u2"),
    "uint64": np.dtype("<u8"),
}


class MediaType(StrEnum):
    BLOSC = "application/blosc"
    BLOSC_PYTHON = "application/blosc-python"
    NPYGZ = "application/npygz"
    JPEG = "image/jpeg"


# What a wildcard in Accept resolves to; the first entry is also the default (as in BossDB,
# whose first renderer is blosc: curl's */* and a missing header both get blosc).
_WILDCARDS = {
    "*/*": MediaType.BLOSC,
    "application/*": MediaType.BLOSC,
    "image/*": MediaType.JPEG,
}
_MAX_ACCEPT_ITEMS = 32


def negotiate(accept: str | None) -> MediaType:
    """Pick the encoding for an Accept header (q-values honoured; ties keep header order)."""
    if not accept or not accept.strip():
        return MediaType.BLOSC
    candidates: list[tuple[float, int, MediaType]] = []
    for position, item in enumerate(accept.split(",")[:_MAX_ACCEPT_ITEMS]):
        name, _, params = item.strip().partition(";")
        name = name.strip().lower()
        q = 1.0
        for param in params.split(";"):
            key, _, value = param.strip().partition("=")
            if key.strip() == "q":
                try:
                    q = float(value)
                except ValueError:
                    q = 0.0
        media = _WILDCARDS.get(name)
        if media is None:
            try:
                media = MediaType(name)
            except ValueError:
                continue
        if q > 0:
            candidates.append((-q, position, media))
    if not candidates:
        raise NotAcceptable(
            "None of the Accept types can be produced; use one of "
            + ", ".join(m.value for m in MediaType)
        )
    return min(candidates)[2]


def encode(array: np.ndarray, media: MediaType) -> bytes:
    """Encode a C-order Z,Y,X or T,Z,Y,X array for the wire."""
    if media is MediaType.BLOSC:
        return _blosc(array)
    if media is MediaType.NPYGZ:
        buffer = io.BytesIO()
        np.save(buffer, array, allow_pickle=False)
        return bytes(isal_zlib.compress(buffer.getbuffer(), 1))
    if media is MediaType.BLOSC_PYTHON:
        _threads_for(array.nbytes)
        return bytes(blosc.pack_array(array, cname="lz4", clevel=5))
    if media is MediaType.JPEG:  # checked with check_encodable before anything was read
        z, y, x = array.shape
        image = Image.fromarray(np.ascontiguousarray(array).reshape(z * y, x), mode="L")
        out = io.BytesIO()
        image.save(out, format="JPEG", quality=85)
        return out.getvalue()
    raise AssertionError(media)  # pragma: no cover - MediaType is closed


def encode_picture(pixels: np.ndarray, media: str) -> bytes:
    """A PNG (``image/png``) or JPEG (``image/jpeg``) of a 2-D grey (uint8) or RGBA
    (height, width, 4 uint8) picture."""
    image = Image.fromarray(np.ascontiguousarray(pixels), mode="L" if pixels.ndim == 2 else "RGBA")
    out = io.BytesIO()
    if media == "image/jpeg":
        image.save(out, format="JPEG", quality=85)
    else:
        image.save(out, format="PNG", compress_level=3)  # near level 6's size, several × faster
    return out.getvalue()


#: The largest frame python-blosc (Blosc1) compresses; past it, it returns an empty bytes.
BLOSC_MAX_BYTES = int(blosc.MAX_BUFFERSIZE)
#: The longest side libjpeg writes (a filmstrip stacks z·y rows).
JPEG_MAX_SIDE = 65500
#: What ``blosc.pack_array``'s pickle adds to the voxels (dtype and shape, generously).
_PICKLE_HEADER = 4096


def crc32(data: bytes | memoryview) -> int:
    """zlib's CRC-32 of ``data``, computed by ISA-L: the same value (what the cache tiers'
    framing has always held), about six times faster (0.9 → 0.14 ms for 4 MiB)."""
    return int(isal_zlib.crc32(data))


def gzip_bytes(data: bytes | memoryview) -> bytes:
    """A gzip stream of ``data`` (a precomputed chunk sent with ``Content-Encoding: gzip``)."""
    return bytes(igzip.compress(data, 1))


def check_encodable(media: MediaType, dtype: np.dtype[np.generic],
                    shape: tuple[int, ...]) -> None:
    """Refuse, before anything is read, an answer the encoding cannot carry (a 4-D shape is a
    time request): better a 413 now than a 200 with an empty or broken body later."""
    nbytes = math.prod(shape) * dtype.itemsize
    if media is MediaType.JPEG:
        check_jpeg(dtype, len(shape) == 4)
        z, y, x = shape
        if z * y > JPEG_MAX_SIDE or x > JPEG_MAX_SIDE:
            raise RequestTooLarge(
                f"A JPEG filmstrip is at most {JPEG_MAX_SIDE} pixels a side; this one would be "
                f"{x} wide and {z * y} (z·y) high: ask for fewer slices or another encoding")
    limit = BLOSC_MAX_BYTES - (_PICKLE_HEADER if media is MediaType.BLOSC_PYTHON else 0)
    if media in (MediaType.BLOSC, MediaType.BLOSC_PYTHON) and nbytes > limit:
        raise RequestTooLarge(
            f"{media.value} carries at most {limit} bytes in one Blosc1 frame; this cutout is "
            f"{nbytes} bytes: ask for a smaller box, or for application/npygz")


def encoding_bytes(media: MediaType, nbytes: int) -> int:
    """An upper bound of the memory ``encode`` needs for ``nbytes`` of voxels besides the
    voxels themselves: the body, and any whole copy made on the way (npy bytes before zlib,
    the pickle before Blosc, the image before JPEG)."""
    body = nbytes + nbytes // 256 + _PICKLE_HEADER  # Blosc adds 16 bytes, zlib about n/4000
    return body if media is MediaType.BLOSC else body + nbytes


def check_jpeg(dtype: np.dtype[np.generic], time_request: bool) -> None:
    """JPEG filmstrips are uint8 and 3-D only; checked before any data is read."""
    if time_request:
        raise Unsupported4D("The cutout service JPEG interface does not support 4D cutouts")
    if dtype != np.uint8:
        raise DatatypeMismatch("The cutout service JPEG interface only supports uint8 image data")


#: A Blosc1 frame's header: version, versionlz, flags, typesize, then nbytes (the decoded
#: size), blocksize and cbytes (the frame's own size), uint32 little-endian each.
_BLOSC_HEADER = struct.Struct("<BBBBIII")


def blosc_sizes(frame: bytes | memoryview) -> tuple[int, int] | None:
    """(decoded size, frame size) from a Blosc1 header, or None if ``frame`` has none."""
    if len(frame) < _BLOSC_HEADER.size:
        return None
    _version, _lz, _flags, _typesize, nbytes, _blocksize, cbytes = _BLOSC_HEADER.unpack_from(
        frame)
    return nbytes, cbytes


def decode_blosc(body: bytes | memoryview, dtype: np.dtype[np.generic],
                 shape: tuple[int, ...]) -> np.ndarray:
    """A Blosc1 frame of C-order voxels, checked for exactly the bytes ``shape`` needs;
    ValueError on anything else (an HTML page, a short body, the wrong dtype's length). The
    header is checked before anything is decompressed: a small frame that claims 2 GiB is
    refused, not inflated."""
    expected = int(np.prod(shape)) * dtype.itemsize
    sizes = blosc_sizes(body)
    if sizes is None:
        raise ValueError("not a Blosc frame (too short)")
    if sizes != (expected, len(body)):
        raise ValueError(f"a Blosc frame of {sizes[1]} bytes holding {sizes[0]} where "
                         f"{len(body)} bytes holding {expected} were expected")
    try:
        raw = _decompressed(body, expected)
    except Exception as exc:  # blosc raises bare RuntimeError/ValueError/TypeError
        raise ValueError(f"not a Blosc frame ({type(exc).__name__})") from exc
    if len(raw) != expected:
        raise ValueError(f"decoded {len(raw)} bytes where {expected} were expected")
    array: np.ndarray = np.frombuffer(raw, dtype=dtype).reshape(shape)
    array.flags.writeable = False
    return array


#: Blosc1's flag for a frame that holds its bytes as they are, right after the 16-byte header
#: (what Blosc stores when compressing did not make them smaller: noisy images)
_MEMCPYED = 0x02


def _decompressed(frame: bytes | memoryview, expected: int) -> bytes | memoryview:
    """The ``expected`` bytes a Blosc1 frame holds. A frame stored uncompressed is not copied:
    its bytes are a view of the frame (for a 4 MiB cuboid, the copy into fresh memory cost
    2 ms on a cold read, at every hop of a chain and on every disk or Redis hit)."""
    if len(frame) == expected + _BLOSC_HEADER.size and frame[2] & _MEMCPYED:
        return memoryview(frame)[_BLOSC_HEADER.size:]
    _threads_for(expected)
    raw: bytes = blosc.decompress(frame)
    return raw


# --- blosc-python uploads ---------------------------------------------------------------------
#
# ``blosc.pack_array`` is a pickle of the array, and numpy pickles an array in one of two ways:
# protocol 5 (what pack_array uses) as ``_frombuffer(buffer, dtype, shape, order)``, older
# protocols as ``_reconstruct(ndarray, (0,), b"b")`` followed by ``__setstate__((version, shape,
# dtype, fortran, rawdata))``. Neither is let run: numpy's own functions would allocate the
# claimed shape before anything is checked (a 112-byte pickle of ``ndarray((2**27,), object)``
# is 1 GiB filled with None) or make an array without its data (``np.empty``: whatever memory
# held, a private channel's voxels among it, written to the store). The unpickler below maps
# each name a numpy array pickle uses to a stand-in that only records what the pickle claims;
# ``_claimed_array`` then checks the claim (unsigned integers, the URL's shape, the voxels'
# bytes all there, in the pickle) and only then makes the array, as a view of those bytes.


class _Ndarray:
    """Stands in for ``numpy.ndarray`` (a pickle names it as ``_reconstruct``'s first
    argument): nothing can be made from it."""


class _Dtype:
    """What a pickled ``numpy.dtype`` claims: its type code, and its byte order (from its
    state), without numpy parsing a state it was sent."""

    def __init__(self, code: object, align: object = False, copy: object = True) -> None:
        if not isinstance(code, str) or len(code) > 8:
            raise pickle.UnpicklingError("a dtype of something other than a type code")
        self.code = code
        self.order = "="

    def __setstate__(self, state: object) -> None:
        if isinstance(state, tuple) and len(state) > 1 and state[1] in ("<", ">", "|", "="):
            self.order = state[1]
        else:
            raise pickle.UnpicklingError("a dtype state that is not a plain type's")

    def dtype(self) -> np.dtype[Any] | None:
        """The plain unsigned-integer dtype it names, or None."""
        if not re.fullmatch(r"u[1248]", self.code):
            return None
        return np.dtype({"<": "<", ">": ">"}.get(self.order, "=") + self.code)


class _Claim:
    """An array a pickle claims: its shape, dtype, bytes and order, checked before use."""

    def __init__(self) -> None:
        self.shape: object = None
        self.dtype: object = None
        self.data: object = None
        self.fortran: object = False

    def __setstate__(self, state: object) -> None:  # ``_reconstruct``'s array, then its state
        if not isinstance(state, tuple) or len(state) != 5:
            raise pickle.UnpicklingError("an array state of another form")
        _, self.shape, self.dtype, self.fortran, self.data = state


def _reconstruct(kind: object, shape: object, typecode: object) -> _Claim:
    if kind is not _Ndarray:
        raise pickle.UnpicklingError("_reconstruct of something other than an ndarray")
    return _Claim()


def _frombuffer(buffer: object, dtype: object, shape: object, order: object) -> _Claim:
    claim = _Claim()
    claim.data, claim.dtype, claim.shape, claim.fortran = buffer, dtype, shape, order == "F"
    return claim


def _latin1(text: object, encoding: object = "latin1") -> bytes:
    """``_codecs.encode``: how protocol 2 carries bytes (as a latin-1 string)."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("_codecs.encode of something other than bytes")
    return text.encode("latin1")


#: What a pickled numpy array may name (numpy 1.x and 2.x spellings), and what stands in for
#: each. Anything else in an uploaded pickle is refused unmade.
_PICKLE_GLOBALS: dict[tuple[str, str], Any] = {
    **{(f"numpy.{core}.numeric", "_frombuffer"): _frombuffer for core in ("_core", "core")},
    **{(f"numpy.{core}.multiarray", "_reconstruct"): _reconstruct for core in ("_core", "core")},
    ("numpy", "ndarray"): _Ndarray, ("numpy", "dtype"): _Dtype, ("_codecs", "encode"): _latin1,
}


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        stand_in = _PICKLE_GLOBALS.get((module, name))
        if stand_in is None:
            raise pickle.UnpicklingError(f"{module}.{name} is not part of a numpy array")
        return stand_in


def _claimed_array(claim: object, dtype: np.dtype[Any], shape: tuple[int, ...]) -> np.ndarray:
    """The array ``claim`` describes, if it is a plain unsigned array of ``shape`` (a 3-D one
    also as one time sample, as BossDB reads it) whose bytes are all in the pickle; else
    BossDB's 2001 (another dtype) or 2002 (anything else)."""
    if not isinstance(claim, _Claim) or not isinstance(claim.dtype, _Dtype):
        raise DataDimensionMismatch("The body is not a packed numpy array")
    claimed = claim.dtype.dtype()
    if claimed is None:
        raise DataDimensionMismatch(
            f"The body is not a packed array of unsigned integers ({claim.dtype.code[:8]})")
    if claimed.newbyteorder("<") != dtype:
        raise DatatypeMismatch(f"The body holds {claimed.name} voxels; this channel is "
                               f"{dtype.name}")
    got = claim.shape
    if (not isinstance(got, tuple) or len(got) > 4
            or not all(isinstance(n, int) and 0 <= n < 2**40 for n in got)):
        raise DataDimensionMismatch("The body's array has no plain shape")
    as_series = (1, *got) if len(got) == 3 else got
    wanted = (1, *shape) if len(shape) == 3 else shape
    if as_series != wanted:
        raise DataDimensionMismatch(
            "Data dimensions in URL do not match POSTed data: the body's array is "
            f"{' x '.join(map(str, got))}, the URL's box {' x '.join(map(str, shape))} "
            f"({'t, ' if len(shape) == 4 else ''}z, y, x)")
    data = claim.data
    if not isinstance(data, bytes | bytearray):
        raise DataDimensionMismatch("The body's array does not carry its voxels")
    if memoryview(data).nbytes != int(np.prod(shape)) * dtype.itemsize:
        raise DataDimensionMismatch(
            f"The body's array carries {memoryview(data).nbytes} bytes for "
            f"{int(np.prod(shape))} {dtype.name} voxels")
    array = np.frombuffer(data, claimed).reshape(got, order="F" if claim.fortran is True else "C")
    return np.ascontiguousarray(array, dtype=dtype).reshape(shape)


def upload_media(content_type: str | None) -> MediaType:
    """The encoding of a POSTed cutout, from its Content-Type (415 for anything else: a form
    a web page could send cross-site without asking is never read as voxels)."""
    name = (content_type or "").partition(";")[0].strip().lower()
    if name in (MediaType.BLOSC, MediaType.BLOSC_PYTHON):
        return MediaType(name)
    shown = name[:60] or "none"
    raise UnsupportedMediaType(f"Content-Type {shown!r} cannot be written; POST "
                               "application/blosc (what intern sends) or application/blosc-python")


def decode_upload(body: bytes, media: MediaType, dtype: np.dtype[Any],
                  shape: tuple[int, ...]) -> np.ndarray:
    """A POSTed cutout as a C-order array of ``shape`` (from the URL, as BossDB reads it):
    BossDB's 2001 when the body holds voxels of another dtype, 2002 when it holds some other
    number of bytes, or is not a frame at all. Sizes are checked from the header before
    anything is inflated."""
    expected = int(np.prod(shape)) * dtype.itemsize
    sizes = blosc_sizes(body)
    if sizes is None or sizes[1] != len(body):
        raise DataDimensionMismatch("The body is not one Blosc frame (application/blosc is "
                                    "blosc.compress of the voxels' bytes)")
    if media is MediaType.BLOSC:
        _check_length(sizes[0], expected, dtype, shape)
    elif sizes[0] > int(np.prod(shape)) * 8 + 4096:
        # a pickle adds a header to the voxels, no more (of the widest dtype, which is then
        # told apart as a dtype mismatch)
        raise DataDimensionMismatch(f"The body unpacks to {sizes[0]} bytes; {expected} bytes "
                                    f"of {dtype.name} voxels were expected")
    try:
        _threads_for(sizes[0])
        raw = blosc.decompress(body)
    except Exception as exc:  # blosc raises bare RuntimeError/ValueError/TypeError
        raise DataDimensionMismatch(f"The body is not a Blosc frame ({type(exc).__name__})"
                                    ) from exc
    if media is MediaType.BLOSC:
        return np.frombuffer(raw, dtype=dtype).reshape(shape)
    try:
        claim = _ArrayUnpickler(io.BytesIO(raw)).load()
    except Exception as exc:
        raise DataDimensionMismatch(f"The body is not a packed numpy array ({exc})"[:200]
                                    ) from exc
    del raw  # the claim holds its own copy of the voxels' bytes
    return _claimed_array(claim, dtype, shape)


def _check_length(got: int, expected: int, dtype: np.dtype[Any], shape: tuple[int, ...]) -> None:
    if got == expected:
        return
    voxels = int(np.prod(shape))
    for other in DTYPES.values():
        if other != dtype and got == voxels * other.itemsize:
            raise DatatypeMismatch(f"The body holds {voxels} {other.name} voxels; this "
                                   f"channel is {dtype.name}")
    raise DataDimensionMismatch(
        f"Failed to unpack data. Verify the datatype of your POSTed data and xyz dimensions "
        f"used in the POST URL: {got} bytes where {expected} ({dtype.name}, "
        f"{' x '.join(map(str, shape))} z,y,x) were expected")


def _blosc(array: np.ndarray) -> bytes:
    # lz4 at level 5 with byte shuffle: BossDB's blosclz/9 buys little size for much more CPU,
    # and any Blosc1 codec decodes in intern.
    data = np.ascontiguousarray(array)
    if data.nbytes > BLOSC_MAX_BYTES:  # python-blosc would return b"": never send that
        raise RequestTooLarge(f"application/blosc carries at most {BLOSC_MAX_BYTES} bytes")
    _threads_for(data.nbytes)
    return bytes(blosc.compress(data, typesize=data.itemsize, clevel=5, cname="lz4"))


# --- packed cuboids (the cache's value format) ---------------------------------------------
#
# magic "RLC2" | dtype code | pad | z | y | x (uint32 LE) | fetched at (float64 LE, seconds since
# the epoch) | one Blosc1 frame of the C-order bytes. The header makes an entry self-describing,
# so a value can be checked against the shape and dtype the planner expects before a single
# voxel is trusted, and its age is known without a second lookup (freshness, stale-if-error).
_HEADER = struct.Struct("<4sBxxxIIId")
_MAGIC = b"RLC2"
_DTYPE_CODES: dict[np.dtype[np.generic], int] = {
    np.dtype("<u1"): 1, np.dtype("<u2"): 2, np.dtype("<u8"): 8
}
_CODE_DTYPES: dict[int, np.dtype[np.generic]] = {v: k for k, v in _DTYPE_CODES.items()}


def pack_cuboid(array: np.ndarray, fetched_at: float = 0.0) -> bytes:
    return pack_frame(_blosc(array), array.shape, array.dtype, fetched_at)


def packed_header(shape_zyx: tuple[int, ...], dtype: np.dtype[Any],
                  fetched_at: float = 0.0) -> bytes:
    """What a packed cuboid of ``shape_zyx`` of ``dtype`` starts with, before its frame."""
    z, y, x = shape_zyx
    return _HEADER.pack(_MAGIC, _DTYPE_CODES[np.dtype(dtype)], z, y, x, fetched_at)


def pack_frame(frame: bytes | memoryview, shape_zyx: tuple[int, ...], dtype: np.dtype[Any],
               fetched_at: float = 0.0) -> bytes:
    """A packed cuboid around a Blosc1 frame the caller has checked decodes to ``shape_zyx``
    of ``dtype`` (an upstream relay's own frame, kept rather than compressed again)."""
    return packed_header(shape_zyx, dtype, fetched_at) + frame


def packed_fetched_at(packed: bytes | memoryview) -> float | None:
    """When the upstream read behind a packed cuboid happened; None if it is not one."""
    if len(packed) < _HEADER.size:
        return None
    magic, _code, _z, _y, _x, fetched_at = _HEADER.unpack_from(packed)
    return float(fetched_at) if magic == _MAGIC else None


def packed_blosc_frame(packed: bytes, shape_zyx: tuple[int, int, int],
                       dtype: np.dtype[np.generic]) -> memoryview | None:
    """The Blosc1 frame inside a packed cuboid, when it holds exactly ``shape_zyx`` of
    ``dtype``: already the ``application/blosc`` body for a request of exactly that cuboid, so a
    warm aligned read is served without decoding or re-encoding. None when anything differs."""
    if len(packed) < _HEADER.size:
        return None
    magic, code, z, y, x, _fetched_at = _HEADER.unpack_from(packed)
    if magic != _MAGIC or _CODE_DTYPES.get(code) != dtype or (z, y, x) != shape_zyx:
        return None
    frame = memoryview(packed)[_HEADER.size :]
    if blosc_sizes(frame) != (z * y * x * dtype.itemsize, len(frame)):
        return None
    return frame


def unpack_cuboid(packed: bytes | memoryview) -> np.ndarray:
    """Inverse of ``pack_cuboid``; raises ValueError on anything malformed."""
    if len(packed) < _HEADER.size:
        raise ValueError("packed cuboid shorter than its header")
    magic, code, z, y, x, _fetched_at = _HEADER.unpack_from(packed)
    if magic != _MAGIC or code not in _CODE_DTYPES:
        raise ValueError("not a packed cuboid")
    dtype = _CODE_DTYPES[code]
    frame = memoryview(packed)[_HEADER.size :]
    if blosc_sizes(frame) != (z * y * x * dtype.itemsize, len(frame)):
        raise ValueError("packed cuboid's frame does not hold its shape")
    try:
        raw = _decompressed(frame, z * y * x * dtype.itemsize)
    except Exception as exc:  # blosc raises a bare RuntimeError/ValueError on bad frames
        raise ValueError(f"bad blosc frame: {exc}") from exc
    if len(raw) != z * y * x * dtype.itemsize:
        raise ValueError("packed cuboid has the wrong length")
    array: np.ndarray = np.frombuffer(raw, dtype=dtype).reshape(z, y, x)
    array.flags.writeable = False
    return array


#: The block size of the compressed_segmentation chunks served (x, y, z), what neuroglancer's
#: and igneous's defaults are.
CSEG_BLOCK = (8, 8, 8)
#: What the codec takes.
CSEG_DTYPES = frozenset({np.dtype("<u4"), np.dtype("<u8")})


def encode_compressed_segmentation(voxels: np.ndarray) -> bytes:
    """A Z,Y,X label array as one compressed_segmentation chunk (x fastest, ``CSEG_BLOCK``)."""
    # the codec writes through a typed memoryview, which a read-only (cached) array refuses
    labels = voxels if voxels.flags.writeable else voxels.copy()
    # .T is the x, y, z view of the same bytes, Fortran-ordered: what the chunk is
    return bytes(compressed_segmentation.compress(labels.T, block_size=CSEG_BLOCK, order="F"))
