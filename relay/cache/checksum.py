"""The framing every value outside the process carries (disk tier, shared tier): a magic, a
CRC-32 and the payload's length ahead of the payload. A value that fails any of the three (a
damaged file, a truncated write, a foreign key's value in a shared Redis) is a miss, never a
wrong voxel."""

from __future__ import annotations

import struct

from ..codecs import crc32

__all__ = ["looks_sealed", "seal", "seal_header", "unseal"]

_FRAME = struct.Struct("<4sIQ")  # magic, crc32, payload length
_MAGIC = b"RLD1"


def seal_header(value: bytes) -> bytes:
    """What goes in front of ``value``: written apart from it, it saves copying the value."""
    return _FRAME.pack(_MAGIC, crc32(value), len(value))


def seal(value: bytes) -> bytes:
    return seal_header(value) + value


def unseal(framed: object) -> bytes | None:
    """The payload of a sealed value, or None for anything else."""
    if not isinstance(framed, bytes) or len(framed) < _FRAME.size:
        return None
    magic, crc, length = _FRAME.unpack_from(framed)
    payload = framed[_FRAME.size:]
    if magic != _MAGIC or length != len(payload) or crc32(payload) != crc:
        return None
    return payload


def looks_sealed(framed: object) -> bool:
    """Does ``framed`` begin as a sealed value does (a relay's, damaged or not), rather than
    being another program's bytes?"""
    return isinstance(framed, bytes) and framed[:len(_MAGIC)] == _MAGIC
