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


# --- blosc-python uploads (issue 25, findings 3, 5 and 10) ------------------------------------


class _Claiming:
    """A pickle that names numpy's own reconstruction with a state of the pickler's choice."""

    def __init__(self, shape: tuple[int, ...], dtype: str, data: object) -> None:
        self.state = (1, shape, np.dtype(dtype), False, data)

    def __reduce__(self) -> tuple[object, ...]:
        from numpy._core.multiarray import _reconstruct

        return (_reconstruct, (np.ndarray, (0,), b"b"), self.state)


def _upload_error(body: bytes, shape: tuple[int, ...], dtype: str) -> tuple[int, int]:
    from relay.codecs import MediaType, decode_upload
    from relay.errors import RelayError

    with pytest.raises(RelayError) as refused:
        decode_upload(body, MediaType.BLOSC_PYTHON, np.dtype(dtype), shape)
    return refused.value.status, refused.value.code


@pytest.mark.parametrize("protocol", [2, 3, 4, 5])
@pytest.mark.parametrize("fortran", [False, True])
@pytest.mark.parametrize("dtype", ["uint8", "uint16", "uint64", ">u2"])
def test_blosc_python_bodies_of_every_protocol_and_order_decode(protocol: int, fortran: bool,
                                                                dtype: str) -> None:
    import pickle

    from relay.codecs import MediaType, decode_upload

    rng = np.random.default_rng(protocol)
    voxels = rng.integers(0, 2**15, (3, 5, 7)).astype(dtype)
    if fortran:
        voxels = np.asfortranarray(voxels)
    body = blosc.compress(pickle.dumps(voxels, protocol), typesize=1)
    channel = np.dtype(dtype).newbyteorder("<")
    got = decode_upload(body, MediaType.BLOSC_PYTHON, channel, (3, 5, 7))
    assert got.dtype == channel and got.flags.c_contiguous
    assert np.array_equal(got, voxels)
    # a 3-D array is one time sample of a time range of one, as BossDB reads it
    assert np.array_equal(decode_upload(body, MediaType.BLOSC_PYTHON, channel, (1, 3, 5, 7))[0],
                          voxels)


def test_a_pickle_without_its_voxels_is_refused() -> None:
    """Finding 3: shape and dtype alone made ``np.empty`` (whatever the memory held, written
    to the store)."""
    import pickle

    for data in (b"", b"\xab" * 10):
        body = blosc.compress(pickle.dumps(_Claiming((4, 8, 16), "uint8", data), 2))
        assert _upload_error(body, (4, 8, 16), "uint8") == (400, 2002)


def test_an_object_array_pickle_allocates_nothing() -> None:
    """Finding 5: a pickle of ``ndarray((2**27,), object)`` (a couple of hundred bytes) was
    1 GiB filled with None before the dtype was looked at."""
    import pickle
    import resource

    body = blosc.compress(pickle.dumps(_Claiming((1, 1, 2**27), "O", []), 2))
    assert len(body) < 300
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert _upload_error(body, (1, 1, 2**27), "uint8") == (400, 2002)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 * 1024  # KiB


def test_an_array_of_another_shape_is_refused_as_bossdb_does() -> None:
    """Finding 10: a (50, 30, 4) array for a 4 × 30 × 50 box was written scrambled; BossDB
    says 400/2002 ("Data dimensions in URL do not match POSTed data")."""
    voxels = np.arange(6000, dtype=np.uint16).reshape(50, 30, 4)
    assert _upload_error(blosc.pack_array(voxels), (4, 30, 50), "uint16") == (400, 2002)
    assert _upload_error(blosc.pack_array(voxels.reshape(2, 4, 30, 25)), (4, 30, 50),
                         "uint16") == (400, 2002)
    # another dtype is still told as such
    assert _upload_error(blosc.pack_array(voxels.reshape(4, 30, 50).astype(np.uint8)),
                         (4, 30, 50), "uint16") == (400, 2001)


@pytest.mark.parametrize("name", ["posix.system", "builtins.eval", "numpy.frombuffer",
                                  "numpy._core.multiarray.empty"])
def test_a_pickle_naming_anything_else_is_refused_unmade(name: str) -> None:
    import pickle

    module, _, attribute = name.rpartition(".")
    raw = (b"\x80\x02c" + module.encode() + b"\n" + attribute.encode() + b"\n"
           + pickle.dumps(("x",), 2)[2:-1] + b"R.")
    assert _upload_error(blosc.compress(raw), (1, 1, 1), "uint8") == (400, 2002)
