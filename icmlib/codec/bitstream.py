"""The ``.icm`` file: the codec's rANS streams in a small, checked container.

A learned codec's output is two byte strings (the main stream ŷ and the side stream ẑ)
that only make sense together with the image size and *the exact model* that wrote
them: decoding them with another model's weights gives a wrong image without any error.
The container therefore records which model wrote it, and protects everything with a
checksum, so every way a file can go wrong ends in one clear ``BitstreamError``.

Byte layout (format version 2; integers are unsigned, big-endian, as in PNG)::

    offset     size  field
    ---------  ----  ---------------------------------------------------------------
    0          4     magic  89 49 43 4D  ("\\x89ICM"; the high byte catches 7-bit
                     transfers, like PNG's)
    4          1     format version (2; see below)
    5          8     model fingerprint: ``icmlib.codec.model.fingerprint(net)``, a hash of
                     the decoder's weights and CDF tables
    13         2     image height H (pixels)
    15         2     image width W
    17         1     padding at the bottom (rows added to reach a multiple of STRIDE)
    18         1     padding at the right (columns)
    19         2     latent height zh of ẑ  (= (H + pad_bottom) / STRIDE)
    21         2     latent width  zw of ẑ  (ŷ is 4·zh × 4·zw)
    23         1     number of streams n (2 for ICMCodec: ŷ, then ẑ)
    24         4·n   length of each stream in bytes
    24 + 4n    ...   the streams, one after the other
    end − 4    4     CRC-32 (zlib) of every byte before it

The fixed part (``header_size(n)``) is 24 + 4n + 4 bytes: 36 bytes for the usual two
streams. Everything else is rANS output, so the file's bits per pixel are the
likelihood estimate plus rANS's few bytes of flushed state per stream plus this header.

Versions: 2 computes the hyperprior's scales and means in float64 on the CPU, so a file
decodes the same whatever device encoded it (``icmlib.codec.determinism.ExactHyperSynthesis``).
Version 1 (the same layout) computed them in float32 on the encoder's device; a version-1
file is still read (``icm info``), but decoding it is refused with a clear message, since
this icmlib would pick other CDFs for some symbols and decode a wrong image.

What is checked, in order, on reading: empty file; magic; version; header complete;
file length equal to what the header describes (truncated / trailing bytes); CRC-32;
plausible header values (sizes, padding, latent shape, streams). ``decompress_bytes``
then refuses a file written by another model (the fingerprints differ) before any
tensor is touched. The CRC catches every accidental damage of up to 32 bits in a row and
all but one in 4 billion others. A file *crafted* to carry a valid checksum over damaged
streams decodes to some image or raises ``BitstreamError``, never crashes or hangs: the
streams are decoded with ``icmlib.codec.ans``, which checks every read (CompressAI's C++ decoder
does not, so it only decodes bytes the caller wrote itself: ``checked=False``).
"""
from __future__ import annotations

import contextlib
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, List, Tuple, Union

import torch

from icmlib.codec.model import STRIDE, decode_image, encode_image, fingerprint, padding_for

MAGIC = b"\x89ICM"
VERSION = 2
#: versions ``unpack`` reads; only ``VERSION`` is decoded (see the module docstring)
READABLE_VERSIONS = (1, 2)
#: magic, version, fingerprint, H, W, pad_bottom, pad_right, zh, zw, number of streams
_FIXED = struct.Struct(">4sB8sHHBBHHB")
_CRC = struct.Struct(">I")
MAX_SIDE = 65535            # H and W are stored in 16 bits
MAX_PIXELS = 1 << 28        # refuse to allocate absurd images (16384 × 16384)
MAX_STREAMS = 16

PathOrFile = Union[str, os.PathLike, BinaryIO]


class BitstreamError(ValueError):
    """A file that cannot be decoded: empty, not .icm, unsupported version, truncated,
    damaged (checksum), implausible header, or written by another model."""


def header_size(n_streams: int = 2) -> int:
    """Bytes of the container that are not stream data: fixed fields, lengths, CRC."""
    return _FIXED.size + 4 * n_streams + _CRC.size


@dataclass
class ICMFile:
    """The decoded contents of an ``.icm`` file."""

    fingerprint: bytes
    height: int
    width: int
    latent_shape: Tuple[int, int]          # (zh, zw) of ẑ, as CompressAI's "shape"
    streams: List[bytes] = field(default_factory=list)
    padding: Tuple[int, int] = (0, 0)      # (bottom, right)
    version: int = VERSION

    @property
    def pixels(self) -> int:
        return self.height * self.width

    def size_bytes(self) -> int:
        return header_size(len(self.streams)) + sum(len(s) for s in self.streams)

    def bpp(self) -> float:
        """Bits per pixel of the whole file: real bytes × 8 / pixels."""
        return 8 * self.size_bytes() / self.pixels


# --------------------------------------------------------------------------------------
# bytes <-> ICMFile
# --------------------------------------------------------------------------------------

def _check_values(f: ICMFile) -> None:
    """Header values that no encoder writes: refuse them before they reach torch."""
    if f.version not in READABLE_VERSIONS:
        raise BitstreamError(f"unsupported .icm format version {f.version}")
    if len(f.fingerprint) != 8:
        raise BitstreamError(f"model fingerprint must be 8 bytes, got {len(f.fingerprint)}")
    if not (1 <= f.height <= MAX_SIDE and 1 <= f.width <= MAX_SIDE):
        raise BitstreamError(f"implausible image size {f.height}×{f.width} "
                             f"(each side must be 1..{MAX_SIDE})")
    if f.pixels > MAX_PIXELS:
        raise BitstreamError(f"image of {f.height}×{f.width} pixels is larger than this "
                             f"decoder accepts ({MAX_PIXELS} pixels)")
    if tuple(f.padding) != padding_for(f.height, f.width, STRIDE):
        raise BitstreamError(f"padding {tuple(f.padding)} does not match a {f.height}×"
                             f"{f.width} image padded to a multiple of {STRIDE}")
    zh, zw = f.latent_shape
    if (zh * STRIDE, zw * STRIDE) != (f.height + f.padding[0], f.width + f.padding[1]):
        raise BitstreamError(f"latent shape {zh}×{zw} does not match a {f.height}×{f.width} "
                             f"image (expected {(f.height + f.padding[0]) // STRIDE}×"
                             f"{(f.width + f.padding[1]) // STRIDE})")
    if not (1 <= len(f.streams) <= MAX_STREAMS):
        raise BitstreamError(f"{len(f.streams)} streams (expected 1..{MAX_STREAMS})")


def pack(f: ICMFile) -> bytes:
    """The bytes of an ``.icm`` file (see the module docstring for the layout)."""
    _check_values(f)
    streams = [bytes(s) for s in f.streams]
    head = _FIXED.pack(MAGIC, f.version, bytes(f.fingerprint), f.height, f.width,
                       f.padding[0], f.padding[1], f.latent_shape[0], f.latent_shape[1],
                       len(streams))
    lengths = struct.pack(f">{len(streams)}I", *(len(s) for s in streams))
    body = head + lengths + b"".join(streams)
    return body + _CRC.pack(zlib.crc32(body))


def unpack(data: bytes) -> ICMFile:
    """Parse and check an ``.icm`` file; any problem raises ``BitstreamError``."""
    data = bytes(data)
    if len(data) == 0:
        raise BitstreamError("the file is empty (0 bytes): not an .icm file, or writing "
                             "it failed")
    if data[:len(MAGIC)] != MAGIC[:len(data)]:
        raise BitstreamError(f"not an .icm file: it starts with {data[:4]!r}, an .icm file "
                             f"with {MAGIC!r}")
    if len(data) < len(MAGIC) + 1:
        raise BitstreamError(f"truncated .icm file: only {len(data)} bytes")
    version = data[len(MAGIC)]
    if version not in READABLE_VERSIONS:
        raise BitstreamError(f"unsupported .icm format version {version}: this icmlib reads "
                             f"version {VERSION} (a newer icmlib wrote it, or the file is "
                             f"damaged)")
    if len(data) < _FIXED.size:
        raise BitstreamError(f"truncated .icm file: {len(data)} bytes, less than the "
                             f"{_FIXED.size}-byte header")
    (_, _, fp, h, w, pad_b, pad_r, zh, zw, n) = _FIXED.unpack_from(data, 0)
    if not (1 <= n <= MAX_STREAMS):
        raise BitstreamError(f"damaged .icm header: {n} streams (expected 1..{MAX_STREAMS})")
    if len(data) < _FIXED.size + 4 * n:
        raise BitstreamError(f"truncated .icm file: {len(data)} bytes, the header alone "
                             f"needs {_FIXED.size + 4 * n}")
    lengths = struct.unpack_from(f">{n}I", data, _FIXED.size)
    expected = header_size(n) + sum(lengths)
    if len(data) < expected:
        raise BitstreamError(f"truncated .icm file: {len(data)} bytes, but its header "
                             f"describes {expected} (or the header is damaged)")
    if len(data) > expected:
        raise BitstreamError(f"damaged .icm file: {len(data)} bytes, but its header describes "
                             f"{expected} (trailing bytes, or a damaged header)")
    (stored_crc,) = _CRC.unpack_from(data, len(data) - _CRC.size)
    actual_crc = zlib.crc32(data[:-_CRC.size])
    if stored_crc != actual_crc:
        raise BitstreamError(f"damaged .icm file: checksum mismatch (stored CRC-32 "
                             f"{stored_crc:08x}, computed {actual_crc:08x}); some bits changed "
                             f"after it was written")
    streams, pos = [], _FIXED.size + 4 * n
    for length in lengths:
        streams.append(data[pos:pos + length])
        pos += length
    f = ICMFile(fingerprint=fp, height=h, width=w, latent_shape=(zh, zw), streams=streams,
                padding=(pad_b, pad_r), version=version)
    _check_values(f)
    return f


def layout(data: bytes) -> List[Tuple[int, int, str, str]]:
    """``(offset, size, field, value)`` rows describing a (valid) file byte by byte."""
    f = unpack(data)
    n = len(f.streams)
    rows = [(0, 4, "magic", data[:4].hex(" ")),
            (4, 1, "format version", str(f.version)),
            (5, 8, "model fingerprint", f.fingerprint.hex()),
            (13, 2, "height", str(f.height)), (15, 2, "width", str(f.width)),
            (17, 1, "padding bottom", str(f.padding[0])),
            (18, 1, "padding right", str(f.padding[1])),
            (19, 2, "latent height zh", str(f.latent_shape[0])),
            (21, 2, "latent width zw", str(f.latent_shape[1])),
            (23, 1, "number of streams", str(n))]
    names = stream_names(n)
    for i, s in enumerate(f.streams):
        rows.append((_FIXED.size + 4 * i, 4, f"length of {names[i]}", str(len(s))))
    pos = _FIXED.size + 4 * n
    for i, s in enumerate(f.streams):
        rows.append((pos, len(s), names[i], s[:6].hex(" ") + (" …" if len(s) > 6 else "")))
        pos += len(s)
    rows.append((pos, 4, "CRC-32", data[-4:].hex(" ")))
    return rows


def stream_names(n: int) -> List[str]:
    """Readable names of a file's ``n`` streams (ŷ then ẑ for a hyperprior codec)."""
    return ["stream y (main)", "stream z (side)"] if n == 2 else [f"stream {i}" for i in range(n)]


# --------------------------------------------------------------------------------------
# files
# --------------------------------------------------------------------------------------

def write_icm(path_or_file: PathOrFile, f: Union[ICMFile, bytes]) -> int:
    """Write an ``ICMFile`` (or already packed bytes) to a path or binary file; returns
    the number of bytes written. A path is written atomically (temp file + rename)."""
    data = f if isinstance(f, (bytes, bytearray)) else pack(f)
    if hasattr(path_or_file, "write"):
        path_or_file.write(data)
        return len(data)
    path = Path(path_or_file)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)
    return len(data)


def read_icm(path_or_file: PathOrFile) -> ICMFile:
    """Read and check an ``.icm`` file from a path or a binary file object."""
    if hasattr(path_or_file, "read"):
        data = path_or_file.read()
    else:
        path = Path(path_or_file)
        if not path.is_file():
            raise FileNotFoundError(f"no such .icm file: {path}")
        data = path.read_bytes()
    try:
        return unpack(data)
    except BitstreamError as e:
        name = getattr(path_or_file, "name", path_or_file)
        raise BitstreamError(f"{name}: {e}") from None


# --------------------------------------------------------------------------------------
# image <-> bytes with a codec
# --------------------------------------------------------------------------------------

def _as_batch(image: torch.Tensor) -> torch.Tensor:
    x = torch.as_tensor(image)
    if x.dim() == 3:
        x = x.unsqueeze(0)
    if x.dim() != 4 or x.shape[0] != 1 or x.shape[1] != 3:
        raise ValueError(f"expected an RGB image tensor [3, H, W] or [1, 3, H, W], got "
                         f"{tuple(image.shape)}")
    return x.float()


def compress_image(net, image: torch.Tensor) -> ICMFile:
    """Encode an image ([3, H, W] or [1, 3, H, W] in [0, 1]) into an ``ICMFile``."""
    x = _as_batch(image)
    h, w = x.shape[-2:]
    if not (1 <= h <= MAX_SIDE and 1 <= w <= MAX_SIDE) or h * w > MAX_PIXELS:
        raise ValueError(f"a {h}×{w} image is too large for the .icm format "
                         f"(sides up to {MAX_SIDE}, up to {MAX_PIXELS} pixels)")
    enc = encode_image(net, x)
    return ICMFile(fingerprint=fingerprint(net), height=h, width=w,
                   latent_shape=tuple(enc["shape"]), streams=list(enc["strings"]),
                   padding=padding_for(h, w, STRIDE))


def compress_to_bytes(net, image: torch.Tensor) -> bytes:
    """The ``.icm`` bytes of an image ([3, H, W] or [1, 3, H, W] in [0, 1])."""
    return pack(compress_image(net, image))


def check_model(f: ICMFile, net) -> None:
    """Refuse to decode with a model other than the one that wrote the file, or a file
    of an older format version."""
    if f.version != VERSION:
        raise BitstreamError(
            f"this .icm file is format version {f.version}, whose hyperprior ran in float32 on "
            f"the encoder's device; this icmlib decodes version {VERSION} (float64 on the CPU, "
            f"the same on every device) and would pick other CDFs for some symbols. Encode "
            f"the image again with this icmlib (icm encode)")
    ours = fingerprint(net)
    if f.fingerprint != ours:
        raise BitstreamError(
            f"this file was written by model {f.fingerprint.hex()}, but the decoder is "
            f"model {ours.hex()}; decoding it would give a wrong image. Decode with the "
            f"codec that encoded it (icm decode --model CKPT)")
    if len(f.streams) != 2:  # a hyperprior codec writes ŷ and ẑ
        raise BitstreamError(f"{len(f.streams)} streams, but this codec writes 2 (ŷ and ẑ)")
    for name, s in zip(stream_names(len(f.streams)), f.streams):
        # CompressAI's rANS writes a 64-bit state plus 32-bit words: 8 + 4k bytes
        if len(s) < 8 or len(s) % 4:
            raise BitstreamError(f"{name} is {len(s)} bytes: not a CompressAI rANS stream "
                                 f"(8 + 4k bytes)")


def decompress_file(net, f: ICMFile, *, checked: bool = True) -> torch.Tensor:
    """Decode an ``ICMFile`` with ``net`` into an image tensor [3, H, W] in [0, 1].

    ``checked`` (default): the rANS streams are decoded by ``icmlib.codec.ans``, which checks
    every read, so damaged streams -- even under a valid checksum -- give some image or a
    ``BitstreamError``, never a crash or a hang. ``checked=False`` uses CompressAI's C++
    decoder (faster; the same image for a valid file), which trusts its input and may read
    past its buffer: only for bytes the caller itself just encoded.
    """
    from icmlib.codec.ans import RansError, use_icmlib_ans

    check_model(f, net)
    coder = use_icmlib_ans(net) if checked else contextlib.nullcontext()
    try:
        with coder:
            x_hat = decode_image(net, f.streams, f.latent_shape, (f.height, f.width))
    except RansError as e:
        raise BitstreamError(f"damaged .icm streams: {e}") from None
    if not torch.isfinite(x_hat).all():
        raise BitstreamError("damaged .icm streams: they decode to non-finite pixels")
    return x_hat[0]


def decompress_bytes(net, data: bytes, *, checked: bool = True) -> torch.Tensor:
    """Decode ``.icm`` bytes with ``net`` into an image tensor [3, H, W] in [0, 1]
    (``checked``: see :func:`decompress_file`)."""
    return decompress_file(net, unpack(data), checked=checked)
