"""What a coded image's bytes are made of: the coded stream a decoder needs, and the rest.

On a 128×128 image one byte is 0.0005 bpp, so the few hundred bytes a file format puts
around a codec's bitstream can be a fifth of a low-rate file. Comparing codecs by whole
files then measures their containers as much as their coding. This module splits every
codec's bytes into parts, each a byte count, so that a rate can be counted **the same way
for every codec**.

The rule (what ``bpp`` counts)
------------------------------
*The coded bitstream the decoder needs, nothing the project or a file format adds around
it* — what the paper (Le et al. 2021), CompressAI's evaluation and the JVET/MPEG common
test conditions compare:

* a **traditional codec**: its elementary stream as the encoder writes it, its own headers
  included (JPEG's tables and frame/scan headers, HEVC's and VVC's parameter sets, AV1's
  sequence header, the JPEG 2000 main header): a decoder cannot do without them;
* a **learned codec**: its entropy-coded streams (ŷ and ẑ) plus the minimal side
  information a decoder needs to use them — the image height and width (2 × uint16) and
  one uint16 length per stream: :func:`learned_side_bytes`, 8 bytes for a hyperprior's two
  streams. Which model wrote the streams is not counted (the decoder is chosen by the
  evaluation, as in CompressAI and the paper; an anchor's profile is not counted either).

Not counted (recorded separately, so whole files are one sum away):

==============  ========================================================================
``container``   the file format around the coded stream: JFIF/Exif APPn segments of a
                JPEG, RIFF and chunk headers of a WebP, the HEIF boxes of an AVIF (the
                AV1 image item stays coded), JP2 boxes, the ``.icm`` container's fields
                beyond the minimal side information (magic, version, fingerprint,
                padding, latent size, 32-bit lengths, CRC)
``metadata``    bytes inside the codec's own stream that no decoder needs to reconstruct
                the picture: JPEG and JPEG 2000 comment segments, HEVC/VVC SEI messages,
                AV1 metadata, padding and redundant frame-header OBUs
``size_prefix`` the 4 bytes (width, height) the project puts before the HEVC, AV1 and VVC
                streams so its decoder can crop the even-size padding of 4:2:0
==============  ========================================================================

and, for information, ``headers``: the part of ``coded`` a codec writes once per image
before its entropy-coded data (JPEG marker segments, HEVC/VVC parameter sets and picture
header, AV1 temporal delimiter and sequence header, VP8's frame header, the J2K main and
tile-part headers, a learned codec's side information).

``coded + container + metadata + size_prefix == len(file)`` always
(:func:`check_parts`).

How: each format is parsed by a small function that labels every byte of the file — a
list of spans ``(label, start, end)`` covering it, labels ``headers`` and ``data`` (both
coded), ``container``, ``metadata`` and ``size_prefix`` (:data:`FORMATS`). The counts
(:func:`split`) and the coded stream itself (:func:`coded_stream`: the bytes a decoder of
the bare format reads, which the tests decode) come from the same spans. A file that
cannot be split honestly raises ``ValueError`` rather than guess; a codec of no known
format counts its whole output as coded (:func:`whole`).
"""
from __future__ import annotations

import struct
from typing import Callable, Dict, List, Optional, Sequence, Tuple

#: the parts of a file; ``headers`` is a part *of* ``coded``, the others add up to the file
PARTS = ("coded", "headers", "container", "metadata", "size_prefix")
#: what the rule does not count
OVERHEADS = ("container", "metadata", "size_prefix")
#: the project's header before the HEVC, AV1 and VVC streams (width, height as uint16)
SIZE_PREFIX = 4

RULE = ("coded bitstream only: a traditional codec's elementary stream as its encoder "
        "writes it, its own headers included (JPEG tables, parameter sets, sequence "
        "headers); a learned codec's entropy-coded streams plus image size (2 x uint16) "
        "and one uint16 length per stream. File containers (JFIF, RIFF, HEIF, .icm), "
        "metadata (comments, SEI) and the project's 4-byte size prefix are recorded, "
        "not counted")

#: one labelled piece of a file: (label, start, end); labels: headers, data, container,
#: metadata, size_prefix
Span = Tuple[str, int, int]
_LABELS = ("headers", "data", "container", "metadata", "size_prefix")


def whole(n: int) -> Dict[str, int]:
    """A format this module cannot split: all ``n`` bytes counted as coded."""
    return {"coded": int(n), "container": 0, "metadata": 0, "size_prefix": 0}


def check_parts(p: Dict[str, int], total: int, who: str = "codec") -> Dict[str, int]:
    """Check that the parts add up to the file and ``headers`` fits in ``coded``."""
    s = sum(int(p.get(k, 0)) for k in ("coded",) + OVERHEADS)
    if s != total or min(int(p.get(k, 0)) for k in PARTS) < 0:
        raise ValueError(f"{who}: parts {p} add up to {s} bytes, the file has {total}")
    if p.get("headers", 0) > p["coded"]:
        raise ValueError(f"{who}: headers ({p['headers']}) exceed the coded bytes {p['coded']}")
    return p


def parts_of(spans: Sequence[Span], total: int) -> Dict[str, int]:
    """The byte count of each part, from spans that must tile ``[0, total)`` exactly."""
    pos = 0
    sums = dict.fromkeys(_LABELS, 0)
    for label, start, end in spans:
        if label not in sums or start != pos or end < start:
            raise ValueError(f"spans do not tile the file: {label!r} [{start}, {end}) "
                             f"after byte {pos}")
        sums[label] += end - start
        pos = end
    if pos != total:
        raise ValueError(f"spans cover {pos} of {total} bytes")
    return check_parts({"coded": sums["headers"] + sums["data"], "headers": sums["headers"],
                        "container": sums["container"], "metadata": sums["metadata"],
                        "size_prefix": sums["size_prefix"]}, total)


def _shift(spans: Sequence[Span], offset: int) -> List[Span]:
    return [(label, a + offset, b + offset) for label, a, b in spans]


def _merge(spans: Sequence[Span]) -> List[Span]:
    """Adjacent spans with the same label joined (shorter lists, same meaning)."""
    out: List[Span] = []
    for span in spans:
        if span[2] == span[1]:
            continue
        if out and out[-1][0] == span[0] and out[-1][2] == span[1]:
            out[-1] = (span[0], out[-1][1], span[2])
        else:
            out.append(span)
    return out


# ---- JPEG (ITU-T T.81 markers) -----------------------------------------------------------
_JPEG_CONTAINER = {0xE0, 0xE1, 0xE2}   # APP0 JFIF/JFXX, APP1 Exif/XMP, APP2 ICC profile
_JPEG_COMMENT = 0xFE
_JPEG_NO_LENGTH = {0xD8, 0xD9, 0x01} | set(range(0xD0, 0xD8))
_JPEG_RST = set(range(0xD0, 0xD8))


def jpeg_segments(data: bytes) -> List[Tuple[Optional[int], int, int]]:
    """``[(marker, start, end), ...]`` covering the whole file in order: each marker segment
    (marker, length field, payload; fill bytes go with it), and the entropy-coded data
    after each SOS as ``(None, start, end)``."""
    if not data.startswith(b"\xff\xd8"):
        raise ValueError("not a JPEG: no SOI marker")
    out: List[Tuple[Optional[int], int, int]] = []
    pos = 0
    while pos < len(data):
        start = pos
        if data[pos] != 0xFF:
            raise ValueError(f"JPEG: expected a marker at byte {pos}, got {data[pos]:#04x}")
        while pos < len(data) and data[pos] == 0xFF:
            pos += 1
        if pos >= len(data):
            raise ValueError("JPEG: truncated marker at the end")
        marker = data[pos]
        pos += 1
        if marker not in _JPEG_NO_LENGTH:
            if pos + 2 > len(data):
                raise ValueError(f"JPEG: marker {marker:#04x} truncated")
            pos += struct.unpack_from(">H", data, pos)[0]
        out.append((marker, start, pos))
        if marker == 0xD9:
            break
        if marker == 0xDA:  # a scan: entropy-coded bytes up to the next marker but RSTn
            ecs = pos
            while pos + 1 < len(data) and not (data[pos] == 0xFF and
                                               data[pos + 1] not in {0x00} | _JPEG_RST):
                pos += 1
            if pos + 1 >= len(data):
                raise ValueError("JPEG: the entropy-coded data runs to the end (no EOI)")
            out.append((None, ecs, pos))
    if pos != len(data) or out[-1][0] != 0xD9:
        raise ValueError(f"JPEG: no EOI, or {len(data) - pos} bytes after it")
    return out


def jpeg_spans(data: bytes) -> List[Span]:
    """JPEG: APP0–APP2 (JFIF, Exif, XMP, ICC) are the file format, COM is metadata; every
    other marker segment (DQT, DHT, SOF, SOS, DRI, SOI, EOI) is a header the decoder needs,
    the entropy-coded segments are data."""
    def label(m):
        return ("data" if m is None else "container" if m in _JPEG_CONTAINER
                else "metadata" if m == _JPEG_COMMENT else "headers")
    return _merge([(label(m), a, b) for m, a, b in jpeg_segments(data)])


# ---- WebP (RIFF) ---------------------------------------------------------------------------
def riff_chunks(data: bytes) -> List[Tuple[bytes, int, int]]:
    """``[(fourcc, payload start, payload end), ...]`` of a RIFF/WEBP file."""
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WEBP":
        raise ValueError("not a WebP file: no RIFF/WEBP header")
    if struct.unpack_from("<I", data, 4)[0] + 8 != len(data):
        raise ValueError(f"WebP: the RIFF size is not the file's {len(data)} bytes")
    out, pos = [], 12
    while pos < len(data):
        if pos + 8 > len(data):
            raise ValueError("WebP: truncated chunk header")
        fourcc, n = data[pos:pos + 4], struct.unpack_from("<I", data, pos + 4)[0]
        if pos + 8 + n + (n & 1) > len(data):
            raise ValueError(f"WebP: chunk {fourcc!r} runs past the end")
        out.append((fourcc, pos + 8, pos + 8 + n))
        pos += 8 + n + (n & 1)  # chunks are padded to an even length
    return out


#: bytes of the image header at the start of a chunk's payload: VP8 key frame (3-byte
#: frame tag, start code 9d 01 2a, 14-bit width and height), VP8L (signature, sizes)
_WEBP_HEADERS = {b"VP8 ": 10, b"VP8L": 5, b"ALPH": 1}


def webp_spans(data: bytes) -> List[Span]:
    """WebP: the VP8 (or VP8L, ALPH) chunk payloads are coded; the RIFF header, chunk
    headers, padding and other chunks (VP8X, ICCP, EXIF, XMP) are the container."""
    chunks = riff_chunks(data)
    if not any(f in (b"VP8 ", b"VP8L") for f, _, _ in chunks):
        raise ValueError("WebP: no VP8/VP8L image chunk")
    spans: List[Span] = [("container", 0, 12)]
    pos = 12
    for fourcc, a, b in chunks:
        spans.append(("container", pos, a))
        if fourcc in _WEBP_HEADERS:
            if fourcc == b"VP8 " and data[a + 3:a + 6] != b"\x9d\x01\x2a":
                raise ValueError("WebP: the VP8 chunk is not a key frame (no start code)")
            h = min(_WEBP_HEADERS[fourcc], b - a)
            spans += [("headers", a, a + h), ("data", a + h, b)]
        else:
            spans.append(("container", a, b))
        pos = b + ((b - a) & 1)
        spans.append(("container", b, pos))
    return _merge(spans)


# ---- AV1 OBUs (AV1 spec, section 5) --------------------------------------------------------
AV1_SEQUENCE_HEADER, AV1_TEMPORAL_DELIMITER = 1, 2
_AV1_LABEL = {AV1_SEQUENCE_HEADER: "headers", AV1_TEMPORAL_DELIMITER: "headers",
              5: "metadata", 7: "metadata", 15: "metadata"}  # metadata, redundant FH, padding


def _leb128(data: bytes, pos: int) -> Tuple[int, int]:
    value = 0
    for i in range(8):
        if pos + i >= len(data):
            raise ValueError("AV1: truncated leb128 size")
        byte = data[pos + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos + i + 1
    raise ValueError("AV1: leb128 size longer than 8 bytes")


def av1_obus(data: bytes) -> List[Tuple[int, int, int]]:
    """``[(obu_type, start, end), ...]`` of a low-overhead AV1 stream, each OBU whole
    (header, size field, payload); an OBU without a size field runs to the end."""
    out, pos = [], 0
    while pos < len(data):
        start, head = pos, data[pos]
        if head & 0x80:
            raise ValueError(f"AV1: forbidden bit set in the OBU header at byte {pos}")
        obu_type, has_ext, has_size = (head >> 3) & 0xF, head & 0x04, head & 0x02
        pos += 2 if has_ext else 1
        size, pos = _leb128(data, pos) if has_size else (len(data) - pos, pos)
        if pos + size > len(data):
            raise ValueError(f"AV1: an OBU of type {obu_type} runs past the end")
        pos += size
        out.append((obu_type, start, pos))
    return out


def av1_spans(stream: bytes) -> List[Span]:
    """AV1 OBUs: temporal delimiter and sequence header are headers; metadata, padding and
    redundant frame headers metadata; frames, frame headers and tile groups data."""
    obus = av1_obus(stream)
    types = {t for t, _, _ in obus}
    if AV1_SEQUENCE_HEADER not in types or all(t in _AV1_LABEL for t in types):
        raise ValueError(f"AV1: no sequence header or no frame in the OBU stream (OBU "
                         f"types {sorted(types)})")
    return _merge([(_AV1_LABEL.get(t, "data"), a, b) for t, a, b in obus])


# ---- Annex-B NAL units (HEVC, VVC) ---------------------------------------------------------
def annexb_units(data: bytes, header_bytes: int = 2) -> List[Tuple[int, int, int]]:
    """``[(NAL unit header offset, start, end), ...]`` of an Annex-B byte stream; a unit
    runs from its start code (and the zero bytes before it) to the next one's, so the
    units tile the stream."""
    if not (data.startswith(b"\x00\x00\x01") or data.startswith(b"\x00\x00\x00\x01")):
        raise ValueError("not an Annex-B stream: it does not start with a start code")
    codes, pos = [], 0
    while True:
        pos = data.find(b"\x00\x00\x01", pos)
        if pos < 0:
            break
        codes.append(pos)
        pos += 3 + header_bytes
    if codes[-1] + 3 + header_bytes > len(data):
        raise ValueError("Annex-B stream ends inside a NAL unit header")
    starts = [0]
    for prev, p in zip(codes, codes[1:]):
        s = p
        while s > prev + 3 + header_bytes and data[s - 1] == 0:
            s -= 1  # zero_byte and trailing zeros go with the next unit
        starts.append(s)
    return [(c + 3, s, e) for c, s, e in zip(codes, starts, starts[1:] + [len(data)])]


def hevc_nal_type(data: bytes, offset: int) -> int:
    """H.265: bits 1–6 of the first NAL unit header byte."""
    return (data[offset] >> 1) & 0x3F


def vvc_nal_type(data: bytes, offset: int) -> int:
    """H.266: the top five bits of the second NAL unit header byte."""
    return data[offset + 1] >> 3


def vvc_nal_types(stream: bytes) -> List[int]:
    """NAL unit types of an Annex-B VVC stream, in order (the VVC anchor checks its
    encoder's output with them); ``ValueError`` if it is not an Annex-B stream."""
    return [vvc_nal_type(stream, offset) for offset, _, _ in annexb_units(stream)]


def _nal_spans(stream: bytes, nal_type: Callable[[bytes, int], int], vcl_below: int,
               sei: Tuple[int, ...]) -> List[Span]:
    units = [(nal_type(stream, off), a, b) for off, a, b in annexb_units(stream)]
    if not any(t < vcl_below for t, _, _ in units):
        raise ValueError(f"no slice (VCL NAL unit) in the stream: types {[t for t, _, _ in units]}")
    return _merge([("data" if t < vcl_below else "metadata" if t in sei else "headers", a, b)
                   for t, a, b in units])


def hevc_spans(stream: bytes) -> List[Span]:
    """HEVC Annex-B: slices (types 0–31) data; SEI (39, 40) metadata; VPS, SPS, PPS, AUD
    and the other non-VCL units headers. Start codes belong to their units."""
    return _nal_spans(stream, hevc_nal_type, 32, (39, 40))


def vvc_spans(stream: bytes) -> List[Span]:
    """VVC Annex-B: slices (types 0–11) data; SEI (23, 24) metadata; parameter sets, APS,
    picture header and the other non-VCL units headers."""
    return _nal_spans(stream, vvc_nal_type, 12, (23, 24))


# ---- ISO base media file format (HEIF / AVIF, JP2) -----------------------------------------
def isobmff_boxes(data: bytes, start: int = 0, end: Optional[int] = None
                  ) -> List[Tuple[bytes, int, int, int]]:
    """``[(type, box start, payload start, box end), ...]`` of the boxes in
    ``data[start:end]`` (32-bit, 64-bit and to-the-end sizes)."""
    end = len(data) if end is None else end
    out, pos = [], start
    while pos < end:
        if pos + 8 > end:
            raise ValueError(f"ISOBMFF: truncated box header at byte {pos}")
        size, kind = struct.unpack_from(">I4s", data, pos)
        payload = pos + 8
        if size == 1:
            if pos + 16 > end:
                raise ValueError("ISOBMFF: truncated 64-bit box size")
            size, payload = struct.unpack_from(">Q", data, pos + 8)[0], pos + 16
        elif size == 0:
            size = end - pos
        if size < payload - pos or pos + size > end:
            raise ValueError(f"ISOBMFF: box {kind!r} at byte {pos} has a bad size {size}")
        out.append((kind, pos, payload, pos + size))
        pos += size
    return out


def _box(boxes, kind: bytes):
    for box in boxes:
        if box[0] == kind:
            return box
    raise ValueError(f"no {kind.decode()!r} box")


def _uint(data: bytes, pos: int, size: int) -> Tuple[int, int]:
    if pos + size > len(data):
        raise ValueError("ISOBMFF: truncated field")
    return (int.from_bytes(data[pos:pos + size], "big") if size else 0), pos + size


def heif_primary_extents(data: bytes) -> List[Tuple[int, int]]:
    """``[(file offset, length), ...]`` of a HEIF file's primary item: ``pitm`` names it,
    ``iloc`` locates it (construction method 0: offsets in this file)."""
    meta = _box(isobmff_boxes(data), b"meta")
    children = isobmff_boxes(data, meta[2] + 4, meta[3])  # meta is a full box
    pitm = _box(children, b"pitm")
    version, _ = _uint(data, pitm[2], 1)
    primary, _ = _uint(data, pitm[2] + 4, 2 if version == 0 else 4)
    iloc = _box(children, b"iloc")
    version, _ = _uint(data, iloc[2], 1)
    sizes, pos = _uint(data, iloc[2] + 4, 2)
    off_size, len_size, base_size = sizes >> 12, (sizes >> 8) & 0xF, (sizes >> 4) & 0xF
    idx_size = sizes & 0xF if version in (1, 2) else 0
    wide = 4 if version == 2 else 2
    count, pos = _uint(data, pos, wide)
    for _ in range(count):
        item, pos = _uint(data, pos, wide)
        method = 0
        if version in (1, 2):
            method, pos = _uint(data, pos, 2)
        base, pos = _uint(data, pos + 2, base_size)  # after data_reference_index
        n_extents, pos = _uint(data, pos, 2)
        extents = []
        for _ in range(n_extents):
            off, pos = _uint(data, pos + idx_size, off_size)
            length, pos = _uint(data, pos, len_size)
            extents.append((base + off, length))
        if item == primary:
            if method & 0xF:
                raise ValueError(f"HEIF: the primary item uses construction method {method}")
            return extents
    raise ValueError(f"HEIF: iloc does not locate the primary item {primary}")


def avif_spans(data: bytes) -> List[Span]:
    """AVIF: the primary item — an AV1 still image, its OBUs parsed — is coded; every HEIF
    box around it (ftyp, meta with its av1C copy of the sequence header, the mdat header)
    is the container. An item in several extents is not split (``ValueError``)."""
    extents = heif_primary_extents(data)
    if len(extents) != 1:
        raise ValueError(f"AVIF: the primary item has {len(extents)} extents; not split")
    (start, length), = extents
    if length == 0 or start + length > len(data):
        raise ValueError("AVIF: the primary item's extent lies outside the file")
    inner = _shift(av1_spans(data[start:start + length]), start)
    return _merge([("container", 0, start)] + inner + [("container", start + length, len(data))])


# ---- JPEG 2000 (ITU-T T.800: J2K codestream, JP2 boxes) ------------------------------------
_J2K_SOT, _J2K_SOD, _J2K_EOC, _J2K_COM = 0xFF90, 0xFF93, 0xFFD9, 0xFF64


def j2k_spans(stream: bytes) -> List[Span]:
    """A J2K codestream: main header, tile-part headers (SOT … SOD) and EOC are headers;
    COM segments metadata; the packets of each tile-part data."""
    if not stream.startswith(b"\xff\x4f\xff\x51"):
        raise ValueError("not a J2K codestream: no SOC followed by SIZ")
    spans: List[Span] = [("headers", 0, 2)]
    pos = 2
    while True:
        if pos + 2 > len(stream):
            raise ValueError("J2K: truncated codestream (no EOC)")
        marker = struct.unpack_from(">H", stream, pos)[0]
        if marker == _J2K_EOC:
            spans.append(("headers", pos, pos + 2))
            pos += 2
            break
        if marker == _J2K_SOT:
            spans += _j2k_tile_part(stream, pos)
            pos = spans[-1][2]
            continue
        if marker == _J2K_SOD or pos + 4 > len(stream):
            raise ValueError(f"J2K: unexpected SOD or truncated segment at byte {pos}")
        end = pos + 2 + struct.unpack_from(">H", stream, pos + 2)[0]
        spans.append(("metadata" if marker == _J2K_COM else "headers", pos, end))
        pos = end
    if pos != len(stream):
        raise ValueError(f"J2K: {len(stream) - pos} bytes after EOC")
    return _merge(spans)


def _j2k_tile_part(stream: bytes, pos: int) -> List[Span]:
    """One tile-part from its SOT: header up to SOD, then its packets (Psot long; 0: up
    to the EOC)."""
    if pos + 12 > len(stream):
        raise ValueError("J2K: truncated SOT segment")
    psot = struct.unpack_from(">I", stream, pos + 6)[0]
    end = pos + psot if psot else len(stream) - 2
    sod = stream.find(b"\xff\x93", pos + 12, end)
    if sod < 0 or end > len(stream):
        raise ValueError(f"J2K: the tile-part at byte {pos} has no SOD or runs past the end")
    return [("headers", pos, sod + 2), ("data", sod + 2, end)]


def jp2_spans(data: bytes) -> List[Span]:
    """A JP2 file: the ``jp2c`` box's payload is a J2K codestream; every other box, and
    the jp2c box header, is the container."""
    _, start, payload, end = _box(isobmff_boxes(data), b"jp2c")
    inner = _shift(j2k_spans(data[payload:end]), payload)
    return _merge([("container", 0, payload)] + inner + [("container", end, len(data))])


def jpeg2000_spans(data: bytes) -> List[Span]:
    """A J2K codestream or a JP2 file, whichever ``data`` is."""
    return jp2_spans(data) if data.startswith(b"\x00\x00\x00\x0cjP  ") else j2k_spans(data)


# ---- formats, and the size prefix ----------------------------------------------------------
#: format name -> its span parser; ``"sized-<format>"`` is the stream behind the project's
#: 4-byte size prefix (how the HEVC, AV1 and VVC anchors store their streams)
FORMATS: Dict[str, Callable[[bytes], List[Span]]] = {
    "jpeg": jpeg_spans, "webp": webp_spans, "avif": avif_spans, "jpeg2000": jpeg2000_spans,
    "hevc": hevc_spans, "av1": av1_spans, "vvc": vvc_spans,
}


def spans(fmt: str, data: bytes) -> List[Span]:
    """Every byte of ``data`` labelled, for a format of :data:`FORMATS` (or ``sized-``
    one of them)."""
    prefix = 0
    if fmt.startswith("sized-"):
        fmt, prefix = fmt[len("sized-"):], SIZE_PREFIX
        if len(data) <= prefix:
            raise ValueError(f"not a size-prefixed stream: only {len(data)} bytes")
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r}; known: {sorted(FORMATS)}")
    inner = _shift(FORMATS[fmt](bytes(data[prefix:])), prefix)
    return ([("size_prefix", 0, prefix)] if prefix else []) + inner


def split(fmt: Optional[str], data: bytes) -> Dict[str, int]:
    """The parts of ``data`` in format ``fmt``; ``None``: unknown, all of it coded."""
    if fmt is None:
        return whole(len(data))
    return parts_of(spans(fmt, data), len(data))


def coded_stream(fmt: str, data: bytes) -> bytes:
    """The bytes the rule counts, in file order: what a decoder of the bare format reads
    (the tests decode it and get the file's image back)."""
    return b"".join(data[a:b] for label, a, b in spans(fmt, data) if label in ("headers", "data"))


# ---- learned codecs -------------------------------------------------------------------------
def learned_side_bytes(n_streams: int) -> int:
    """The side information a learned codec's decoder needs with its streams: image
    height and width (2 × uint16) and one uint16 length per stream — 8 bytes for two.
    (A stream of 64 KiB or more would need a wider length: at 640×480 one stream alone
    would have to exceed 1.7 bpp.)"""
    return 4 + 2 * int(n_streams)


def learned_parts(streams: Sequence[bytes], total: int) -> Dict[str, int]:
    """A learned codec's file of ``total`` bytes holding ``streams``: the streams plus the
    side information are coded (the side information as ``headers``), the rest of the
    file is its container."""
    side = learned_side_bytes(len(streams))
    coded = sum(len(s) for s in streams) + side
    if coded > total:
        raise ValueError(f"learned codec: {coded - side} bytes of streams and {side} of side "
                         f"information do not fit in a {total}-byte file")
    return check_parts({"coded": coded, "headers": side, "container": total - coded,
                        "metadata": 0, "size_prefix": 0}, total)


# ---- measuring ---------------------------------------------------------------------------------
def measure(codec, image, quality) -> Dict[str, float]:
    """Encode ``image`` (PIL or H×W×3 array) with ``codec`` at ``quality`` and split its
    bytes (``codec.rate_parts``): the parts, and what the rule leaves out, in bytes and bpp."""
    import numpy as np

    arr = np.asarray(image)
    pixels = arr.shape[0] * arr.shape[1]
    data = codec.encode(image, quality)
    rate_parts = getattr(codec, "rate_parts", None)
    p = check_parts(rate_parts(data) if rate_parts else whole(len(data)), len(data), codec.name)
    not_counted = sum(p[k] for k in OVERHEADS)
    return {"codec": codec.name, "setting": quality, "file": len(data), **p,
            "not_counted": not_counted, "bpp": 8 * p["coded"] / pixels,
            "bpp_file": 8 * len(data) / pixels, "bpp_not_counted": 8 * not_counted / pixels,
            "share_not_counted": not_counted / len(data)}
