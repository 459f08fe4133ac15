"""VVC intra, the paper's anchor, through external binaries: VVenC/VVdeC or VTM.

``make vvc`` builds the pinned VVenC and VVdeC into ``<repository>/tools/vvc`` (:data:`VVC_TOOLS`),
where :class:`VVC` finds them with no variable set. The stream an encoder writes is checked
(an SPS, a PPS and an intra slice) with the one Annex-B parser of
:mod:`icmlib.evaluation.overheads`, the same that splits its bytes for the rate.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Optional, Tuple

import numpy as np
from PIL import Image

from icmlib.evaluation import overheads
from icmlib.evaluation.anchors.base import AnchorUnavailable, Codec, run_tool
from icmlib.evaluation.anchors.yuv import pad_even, rgb_to_yuv, split_size, with_size, yuv_to_rgb

#: Where ``make vvc`` installs VVenC/VVdeC (``<repository>/tools/vvc/bin``); ``$ICM_VVC_TOOLS``
#: overrides the folder (its ``bin/`` or the folder itself holds vvencapp and vvdecapp).
VVC_TOOLS = str(Path(__file__).resolve().parents[3] / "tools" / "vvc")

_VVC_HINT = ("build VVenC and VVdeC with `make vvc` (offline: `make vvc VVC_SRC=<folder with "
             "vvenc-1.14.0.tar.gz and vvdec-3.2.0.tar.gz>`; they go to tools/vvc/bin, found "
             "there without any variable; $ICM_VVC_TOOLS points elsewhere), or set "
             "ICM_VVC_ENCODER and ICM_VVC_DECODER to vvencapp/vvdecapp or to VTM's EncoderApp/"
             "DecoderApp (https://vcgit.hhi.fraunhofer.de/jvet/VVCSoftware_VTM; VTM also needs "
             "ICM_VVC_CONFIG=cfg/encoder_intra_vtm.cfg), or pass encoder=/decoder=/config=")

# VVC NAL unit types (H.266 Table 5) the anchor checks for in an encoder's output.
_VVC_IRAP = {7: "IDR_W_RADL", 8: "IDR_N_LP", 9: "CRA_NUT"}
_VVC_SPS, _VVC_PPS = 15, 16


def _executable(path: Optional[str]) -> Optional[str]:
    if not path:
        return None
    found = shutil.which(path)
    return found if found else None


def vvc_tools_dir() -> str:
    """The folder ``make vvc`` installs into: ``$ICM_VVC_TOOLS`` if set, else ``VVC_TOOLS``."""
    return os.environ.get("ICM_VVC_TOOLS") or VVC_TOOLS


def find_vvc_tool(app: str) -> Optional[str]:
    """``vvencapp`` / ``vvdecapp`` in the tools folder (its ``bin/``, or the folder itself)."""
    root = vvc_tools_dir()
    for folder in (os.path.join(root, "bin"), root):
        exe = os.path.join(folder, app)
        if os.path.isfile(exe) and os.access(exe, os.X_OK):
            return exe
    return None


@functools.lru_cache(maxsize=None)
def _tool_version(exe: str, mtime: float) -> str:
    """First line of ``exe --version`` that names a version ('' if none); cached per binary."""
    try:
        proc = subprocess.run([exe, "--version"], capture_output=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return ""
    for line in proc.stdout.decode(errors="replace").splitlines():
        if "version" in line.lower():
            return " ".join(line.split())
    return ""



class VVC(Codec):
    """VVC intra through VVenC/VVdeC (``vvencapp``/``vvdecapp``) or VTM (``EncoderApp``/
    ``DecoderApp``). The flavour is recognised from each binary's file name (``vvenc`` /
    ``vvdec`` in it → VVenC / VVdeC, else VTM).

    Where the binaries come from, first found wins: ``encoder=``/``decoder=``, then
    ``$ICM_VVC_ENCODER``/``$ICM_VVC_DECODER``, then the project-local tools folder that
    ``make vvc`` fills (``tools/vvc/bin``, or ``$ICM_VVC_TOOLS``). VTM also needs its
    all-intra configuration (``config=`` or ``$ICM_VVC_CONFIG``, default
    ``../cfg/encoder_intra_vtm.cfg`` next to the binary's folder).

    Coding, as for the other video anchors: RGB → YCbCr BT.601 full range, 8-bit 4:2:0
    (``chroma="420"``, the default; ``"444"`` needs VTM: vvencapp reads 4:2:0 input only),
    one intra (IDR) picture at a fixed QP, coded with 10-bit internal sample depth
    (``bitdepth=10``: VVenC's default and the VTM all-intra configuration's); the decoder's
    output is brought back to 8 bits and converted to RGB here. VVenC runs with
    ``--preset medium`` (its default, the middle of its five presets), perceptual QP
    adaptation off (``--qpa 0``, PSNR-fair like x265's ``--tune psnr``) and one thread.
    Measured on four 128×128 synthetic-world images: ``fast`` codes them 0.05 dB worse at
    half the time, ``slow`` 0.03 dB better at 1.7×; a medium round trip takes under a second
    on one core. Setting: QP (0–63; higher = fewer bits); QP 50→26 gives 0.07→2.4 bpp on
    those images (HEVC QP 51→26: 0.08→2.6). Output: the size header and the raw Annex-B
    stream the encoder wrote (VVenC: SPS, PPS and one IDR slice with its picture header),
    checked for an SPS, a PPS and an intra slice."""

    name = "vvc"
    quality_label = "QP"
    rate_format = "sized-vvc"    # the 4-byte size prefix, then the Annex-B stream
    qualities = (50, 47, 44, 41, 38, 35, 32, 29, 26)

    def __init__(self, qualities=None, encoder: Optional[str] = None,
                 decoder: Optional[str] = None, config: Optional[str] = None,
                 preset: str = "medium", chroma: str = "420", bitdepth: int = 10,
                 threads: int = 1, timeout: float = 600):
        if qualities is not None:
            self.qualities = tuple(qualities)
        if chroma not in ("420", "444"):
            raise ValueError(f"chroma must be '420' or '444', got {chroma!r}")
        if bitdepth not in (8, 10):
            raise ValueError(f"bitdepth must be 8 or 10, got {bitdepth!r}")
        self.encoder_path, self.encoder_from = self._locate(encoder, "ICM_VVC_ENCODER", "vvencapp")
        self.decoder_path, self.decoder_from = self._locate(decoder, "ICM_VVC_DECODER", "vvdecapp")
        self.config_path = config or os.environ.get("ICM_VVC_CONFIG")
        self.preset = preset
        self.chroma = chroma
        self.bitdepth = bitdepth
        self.threads = threads
        self.timeout = timeout

    @staticmethod
    def _locate(given: Optional[str], env: str, app: str) -> Tuple[Optional[str], str]:
        if given:
            return given, "argument"
        if os.environ.get(env):
            return os.environ[env], f"${env}"
        found = find_vvc_tool(app)
        return (found, "tools folder") if found else (None, "")

    @property
    def flavour(self) -> str:
        """``"vvenc"`` or ``"vtm"``: which encoder command line to use."""
        return "vvenc" if self.encoder_path and "vvenc" in os.path.basename(
            self.encoder_path).lower() else "vtm"

    @property
    def decoder_flavour(self) -> str:
        return "vvdec" if self.decoder_path and "vvdec" in os.path.basename(
            self.decoder_path).lower() else "vtm"

    def _vtm_config(self) -> Optional[str]:
        if self.config_path:
            return self.config_path
        exe = _executable(self.encoder_path)
        if exe:
            guess = os.path.join(os.path.dirname(os.path.dirname(os.path.realpath(exe))),
                                 "cfg", "encoder_intra_vtm.cfg")
            if os.path.isfile(guess):
                return guess
        return None

    def available(self) -> Tuple[bool, str]:
        if not self.encoder_path or not self.decoder_path:
            missing = " and ".join(r for r, p in (("encoder", self.encoder_path),
                                                  ("decoder", self.decoder_path)) if not p)
            return False, (f"no VVC {missing} (nothing in {vvc_tools_dir()}/bin, "
                           f"ICM_VVC_ENCODER/ICM_VVC_DECODER not set): " + _VVC_HINT)
        for role, path, source in (("encoder", self.encoder_path, self.encoder_from),
                                   ("decoder", self.decoder_path, self.decoder_from)):
            if not _executable(path):
                return False, (f"VVC {role} {path!r} (from {source}) not found or not "
                               f"executable: " + _VVC_HINT)
        if self.flavour == "vvenc" and self.chroma != "420":
            return False, (f"vvencapp codes 4:2:0 input only (chroma={self.chroma!r}); "
                           f"use VTM (ICM_VVC_ENCODER=EncoderApp) for 4:4:4")
        if self.flavour == "vtm":
            cfg = self._vtm_config()
            if not cfg or not os.path.isfile(cfg):
                return False, (f"VTM needs its all-intra configuration file (looked for "
                               f"{cfg or '../cfg/encoder_intra_vtm.cfg next to the binary'}): "
                               f"set ICM_VVC_CONFIG or pass config=")
        tools = []  # VVenC/VVdeC say their version (part of the reproduction's cache key)
        for path, asks in ((self.encoder_path, self.flavour == "vvenc"),
                           (self.decoder_path, self.decoder_flavour == "vvdec")):
            exe = _executable(path)
            version = _tool_version(exe, os.path.getmtime(exe)) if asks else ""
            tools.append(f"{path}" + (f" ({version})" if version else ""))
        what = (f"{self.flavour}" + (f" --preset {self.preset}" if self.flavour == "vvenc" else "")
                + f", {self.chroma}, {self.bitdepth}-bit")
        return True, f"{what}: {tools[0]}, {tools[1]}"

    def _encode(self, image: Image.Image, quality) -> bytes:
        qp = int(quality)
        if not 0 <= qp <= 63:
            raise ValueError(f"VVC QP must be in 0..63, got {quality!r}")
        rgb = np.asarray(image)
        h, w, _ = rgb.shape
        padded = pad_even(rgb) if self.chroma == "420" else rgb
        ph, pw, _ = padded.shape
        with tempfile.TemporaryDirectory(prefix="icm-vvc-") as tmp:
            src, out = os.path.join(tmp, "in.yuv"), os.path.join(tmp, "out.266")
            with open(src, "wb") as f:
                f.write(rgb_to_yuv(padded, self.chroma))
            enc = _executable(self.encoder_path)
            if enc is None:
                raise AnchorUnavailable(f"VVC encoder {self.encoder_path!r} not found")
            if self.flavour == "vvenc":
                # one frame, so the only picture is the IDR that starts the stream
                cmd = [enc, "-i", src, "-s", f"{pw}x{ph}", "-c", "yuv420", "-r", "1", "-f", "1",
                       "--preset", self.preset, "-q", str(qp), "--qpa", "0",
                       "--internal-bitdepth", str(self.bitdepth), "-t", str(self.threads),
                       "-v", "1", "-o", out]
            else:
                cmd = [enc, "-c", self._vtm_config(), "-i", src, "-b", out, "-wdt", str(pw),
                       "-hgt", str(ph), "-fr", "1", "-f", "1", "-q", str(qp),
                       "--InputBitDepth=8", f"--InternalBitDepth={self.bitdepth}",
                       "--OutputBitDepth=8", f"--InputChromaFormat={self.chroma}",
                       f"--ChromaFormatIDC={self.chroma}", "--ConformanceWindowMode=1",
                       "--IntraPeriod=1"]
            run_tool(cmd, "VVC encoder", timeout=self.timeout)
            stream = b""
            if os.path.isfile(out):
                with open(out, "rb") as f:
                    stream = f.read()
        if not stream:
            raise RuntimeError(f"VVC encoder wrote an empty bitstream: {' '.join(cmd)}")
        try:
            types = overheads.vvc_nal_types(stream)
        except ValueError:  # not an Annex-B stream at all
            types = []
        if _VVC_SPS not in types or _VVC_PPS not in types or not set(types) & set(_VVC_IRAP):
            raise RuntimeError(f"VVC encoder output is not an Annex-B VVC intra stream (NAL "
                               f"unit types {types[:12]}; need an SPS, a PPS and an IDR/CRA "
                               f"slice): {' '.join(cmd)}")
        return with_size(w, h, stream)

    def _decode(self, data: bytes) -> Image.Image:
        w, h, stream = split_size(data)
        pw, ph = (w + w % 2, h + h % 2) if self.chroma == "420" else (w, h)
        with tempfile.TemporaryDirectory(prefix="icm-vvc-") as tmp:
            bit, rec = os.path.join(tmp, "in.266"), os.path.join(tmp, "out.yuv")
            with open(bit, "wb") as f:
                f.write(stream)
            dec = _executable(self.decoder_path)
            if dec is None:
                raise AnchorUnavailable(f"VVC decoder {self.decoder_path!r} not found")
            if self.decoder_flavour == "vvdec":
                cmd = [dec, "-b", bit, "-o", rec, "-t", str(self.threads), "-v", "1"]
            else:
                cmd = [dec, "-b", bit, "-o", rec, "-d", "8"]
            run_tool(cmd, "VVC decoder", timeout=self.timeout)
            yuv = b""
            if os.path.isfile(rec):
                with open(rec, "rb") as f:
                    yuv = f.read()
        n8 = pw * ph * (3 if self.chroma == "444" else 1) + (0 if self.chroma == "444" else
                                                            2 * (pw // 2) * (ph // 2))
        if len(yuv) == 2 * n8:  # 16-bit little-endian samples: vvdecapp's output for 10-bit content
            yuv = np.clip(np.round(np.frombuffer(yuv, "<u2") / 4.0), 0, 255).astype(np.uint8).tobytes()
        elif len(yuv) != n8:
            raise RuntimeError(f"VVC decoder wrote {len(yuv)} bytes, expected {n8} (8-bit) or "
                               f"{2 * n8} (16-bit) for one {pw}×{ph} {self.chroma} picture: "
                               f"{' '.join(cmd)}")
        rgb = yuv_to_rgb(yuv, pw, ph, self.chroma)
        return Image.fromarray(np.ascontiguousarray(rgb[:h, :w]), "RGB")

