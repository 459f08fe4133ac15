"""The learned anchors' minimal container (``container="raw"``): a few header bytes and the streams.

The project's ``.icm`` file (:mod:`icmlib.codec.bitstream`) describes a hyperprior's two
streams; a model with another layout (one stream, e.g. ``bmshj2018-factorized``) is stored
here instead: which setting coded it, the image and latent sizes, one length per stream.
Every read is checked, so a truncated or padded file is a ``ValueError`` that says so.
"""
from __future__ import annotations

import struct
from typing import List, Sequence, Tuple

# Header of a learned-codec bitstream (big-endian): setting index (B), image H, W (HH),
# latent z shape zh, zw (HH), number of streams (B), then one uint32 length per stream,
# then the streams. 10 + 4·streams bytes; 18 bytes for a hyperprior's two streams.
_LEARNED_HEAD = struct.Struct(">BHHHHB")


def pack_strings(index: int, size: Tuple[int, int], shape: Tuple[int, int],
                 strings: Sequence[bytes]) -> bytes:
    """Serialize ``encode_image``'s output (plus which model made it) with length prefixes."""
    head = _LEARNED_HEAD.pack(index, size[0], size[1], shape[0], shape[1], len(strings))
    return head + b"".join(struct.pack(">I", len(s)) for s in strings) + b"".join(strings)


def unpack_strings(data: bytes) -> Tuple[int, Tuple[int, int], Tuple[int, int], List[bytes]]:
    """Inverse of ``pack_strings``: ``(index, (H, W), (zh, zw), strings)``."""
    if len(data) < _LEARNED_HEAD.size:
        raise ValueError(f"not a learned-codec bitstream: only {len(data)} bytes")
    index, h, w, zh, zw, n = _LEARNED_HEAD.unpack_from(data)
    pos = _LEARNED_HEAD.size
    if len(data) < pos + 4 * n:
        raise ValueError(f"learned-codec bitstream is truncated: {len(data)} bytes, its header "
                         f"names {n} streams whose lengths alone need {pos + 4 * n}")
    lengths = [struct.unpack_from(">I", data, pos + 4 * i)[0] for i in range(n)]
    pos += 4 * n
    strings = []
    for length in lengths:
        strings.append(data[pos:pos + length])
        pos += length
    if pos != len(data):
        raise ValueError(f"learned-codec bitstream is truncated or has trailing bytes "
                         f"({len(data)} bytes, header says {pos})")
    return index, (h, w), (zh, zw), strings
