"""The Blosc seam's decoding: a frame Blosc stored uncompressed (noisy voxels) is read as a
view of the frame, and must hold exactly what Blosc's own decoder gives."""

from __future__ import annotations

import blosc
import numpy as np
import pytest

from relay.codecs import decode_blosc, pack_cuboid, unpack_cuboid


@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint64"])
@pytest.mark.parametrize("noisy", [True, False])
def test_frames_decode_to_what_blosc_decodes(dtype: str, noisy: bool) -> None:
    rng = np.random.default_rng(7)
    info = np.iinfo(dtype)
    voxels = (rng.integers(0, info.max, (16, 64, 64), dtype=dtype, endpoint=True) if noisy
              else (np.arange(16 * 64 * 64) % 5).astype(dtype).reshape(16, 64, 64))
    for cname in ("lz4", "blosclz", "zstd"):
        for shuffle in (blosc.NOSHUFFLE, blosc.SHUFFLE, blosc.BITSHUFFLE):
            frame = blosc.compress(voxels.tobytes(), typesize=voxels.itemsize, cname=cname,
                                   shuffle=shuffle)
            stored = bool(frame[2] & 0x02)  # Blosc kept the bytes as they were
            assert stored == noisy  # both paths: the view, and Blosc decompressing
            got = decode_blosc(frame, voxels.dtype, voxels.shape)
            np.testing.assert_array_equal(got, voxels)
            assert got.tobytes() == blosc.decompress(frame)
            assert not got.flags.writeable  # a view of the frame (or of Blosc's answer)
    unpacked = unpack_cuboid(pack_cuboid(voxels))
    np.testing.assert_array_equal(unpacked, voxels)
    assert not unpacked.flags.writeable


def test_a_frame_flagged_as_stored_must_be_exactly_header_and_bytes() -> None:
    """A frame whose flags say "stored" but whose length is not the header and the bytes is
    refused by the size check, never read as a view of something else."""
    voxels = np.arange(4096, dtype=np.uint8).reshape(4, 32, 32)
    frame = bytearray(blosc.compress(voxels.tobytes(), typesize=1))
    frame[2] |= 0x02
    with pytest.raises(ValueError):
        decode_blosc(bytes(frame), np.dtype(np.uint8), voxels.shape)
