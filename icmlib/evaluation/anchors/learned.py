"""Learned codecs as anchors: any CompressAI-API model (our ``ICMCodec``, a zoo model).

The bytes are a real file, the ``.icm`` container (:mod:`icmlib.codec.bitstream`) or the
minimal raw one (:mod:`icmlib.evaluation.anchors.container`), so a learned codec's rate
is counted like every other anchor's.
"""
from __future__ import annotations

from typing import Dict, Mapping, Tuple

import numpy as np
from PIL import Image

from icmlib.evaluation import overheads
from icmlib.evaluation.anchors.base import Codec, to_pil
from icmlib.evaluation.anchors.container import pack_strings, unpack_strings


class LearnedCodec(Codec):
    """Any CompressAI-API model (our ``ICMCodec``, a CompressAI zoo model) as an anchor.

    Args:
        nets: one model (a single setting), a sequence of models (settings 0..n-1, ordered by
            rate), or a mapping ``{setting: model}``; a value may also be a zero-argument
            callable that returns the model, loaded on first use (e.g. zoo weights).
        name: the codec's name in tables and plots.
        container: ``"icm"`` (default): the project's ``.icm`` file (``icmlib.codec.bitstream``:
            magic, version, model fingerprint, sizes, stream lengths, CRC-32 — 36 bytes for
            a hyperprior's two streams); the decoder picks the model whose fingerprint the
            file names. ``"raw"``: the streams with a minimal header (``pack_strings``:
            setting index, image and latent sizes, stream lengths — 18 bytes for two
            streams); needed for models the ``.icm`` format does not describe (one stream,
            e.g. ``bmshj2018-factorized``). Either way the whole file is what
            the evaluation's ``bpp_file`` counts; its ``bpp`` counts the streams plus 8 bytes
            of side information (``rate_parts``).

    Encoding runs ``icmlib.codec.model.encode_image`` (pad to the stride, ``net.compress``).
    Decoding runs CompressAI's fast rANS decoder, which trusts its input: ``decode`` is
    for bytes this codec encoded (as in evaluation); decode a file from elsewhere with
    ``icmlib.codec.bitstream.decompress_file``, which checks every read.
    """

    quality_label = "model"

    def __init__(self, nets, name: str, device: str = "cpu", container: str = "icm"):
        if isinstance(nets, Mapping):
            items = list(nets.items())
        elif isinstance(nets, (list, tuple)):
            items = list(enumerate(nets))
        else:
            items = [(0, nets)]
        if not items:
            raise ValueError("LearnedCodec needs at least one model")
        if len(items) > 255:
            raise ValueError("LearnedCodec supports at most 255 settings")
        if container not in ("icm", "raw"):
            raise ValueError(f"container must be 'icm' or 'raw', got {container!r}")
        self.name = name
        self.qualities = tuple(k for k, _ in items)
        self._sources = [v for _, v in items]
        self._loaded: Dict[int, object] = {}
        self._fingerprints: Dict[int, bytes] = {}
        self.device = device
        self.container = container

    @staticmethod
    def _is_model(obj) -> bool:
        return hasattr(obj, "compress") and hasattr(obj, "decompress")

    def available(self) -> Tuple[bool, str]:
        for q, src in zip(self.qualities, self._sources):
            check = getattr(src, "available", None)
            if check is not None and not self._is_model(src):
                ok, why = check()
                if not ok:
                    return False, f"setting {q}: {why}"
        return True, f"{len(self.qualities)} model(s)"

    def model(self, quality):
        """The model for a setting (loaded and put in eval mode on first use)."""
        return self._model_at(self._index(quality))

    def _index(self, quality) -> int:
        try:
            return self.qualities.index(quality)
        except ValueError:
            raise ValueError(f"{self.name}: unknown setting {quality!r}; "
                             f"choose one of {list(self.qualities)}") from None

    def _model_at(self, index: int):
        if index not in self._loaded:
            src = self._sources[index]
            net = src if self._is_model(src) else src()
            net = net.to(self.device).eval()
            self._loaded[index] = net
        return self._loaded[index]

    def _fingerprint_at(self, index: int) -> bytes:
        from icmlib.codec import fingerprint
        if index not in self._fingerprints:
            self._fingerprints[index] = fingerprint(self._model_at(index))
        return self._fingerprints[index]

    def _encode(self, image: Image.Image, quality) -> bytes:
        import torch
        index = self._index(quality)
        net = self._model_at(index)
        x = torch.from_numpy(np.asarray(image).copy()).permute(2, 0, 1).float().div(255)
        x = x.unsqueeze(0).to(self.device)
        if self.container == "icm":
            from icmlib.codec import bitstream
            f = bitstream.compress_image(net, x)
            try:
                return bitstream.pack(f)
            except bitstream.BitstreamError as err:
                raise ValueError(f"{self.name}: the .icm container cannot describe this "
                                 f"model's output ({err}); use container='raw'") from None
        from icmlib.codec import encode_image
        enc = encode_image(net, x)
        return pack_strings(index, enc["size"], enc["shape"], enc["strings"])

    def rate_parts(self, data: bytes) -> Dict[str, int]:
        """The rANS streams plus the minimal side information (image size, a 16-bit length
        per stream: ``overheads.learned_side_bytes``) are coded; the rest of the ``.icm``
        (or raw) header is container."""
        if self.container == "icm":
            from icmlib.codec import bitstream
            streams = bitstream.unpack(data).streams
        else:
            streams = unpack_strings(data)[3]
        return overheads.learned_parts(streams, len(data))

    def _decode(self, data: bytes) -> Image.Image:
        if self.container == "icm":
            from icmlib.codec import bitstream
            f = bitstream.unpack(data)
            # the model the file names: those already loaded first, then the others
            order = sorted(range(len(self.qualities)), key=lambda i: i not in self._loaded)
            for index in order:
                if self._fingerprint_at(index) == f.fingerprint:
                    # the fast C++ rANS decoder: evaluation decodes the bytes it just encoded
                    return to_pil(bitstream.decompress_file(self._model_at(index), f,
                                                            checked=False))
            raise bitstream.BitstreamError(
                f"{self.name}: this file was written by model {f.fingerprint.hex()}, which is "
                f"none of this codec's {len(self.qualities)} model(s)")
        from icmlib.codec import decode_image
        index, size, shape, strings = unpack_strings(data)
        if index >= len(self.qualities):
            raise ValueError(f"{self.name}: bitstream names setting #{index}, but this codec has "
                             f"{len(self.qualities)}")
        return to_pil(decode_image(self._model_at(index), strings, shape, size))
