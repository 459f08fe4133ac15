"""Benchmark: our codec vs CompressAI's MeanScaleHyperprior on the CPU, and icmlib.codec.ans.

Measures, on the same images and in the same run (interleaved, so machine load hits both
alike -- compare the *ratios*, not the absolute times):

* encode and decode time per image, ``ICMCodec(N, M)`` vs ``MeanScaleHyperprior(N, M)``
  (median of several runs after a warm-up), and their ratio (target ≤ 1.1);
* the ``.icm`` file's bits against the likelihood estimate (overhead, header included);
* ``icmlib.codec.ans`` symbols per second against CompressAI's C++ coder, on the real symbols
  and CDF tables of one image (both produce the same bytes).

Writes a markdown table and ``data/benchmarks/codec_cpu.{json,md}`` with the command,
git commit, CPU model, torch version, date and machine load.

    python benchmarks/bench_codec.py                       # random-init codecs, N, M of the cpu preset
    python benchmarks/bench_codec.py --model CKPT          # a trained codec (rates meaningful)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

from icmlib.evaluation.results import cpu_model, git_commit
from compressai import ans as compressai_ans
from compressai.models import MeanScaleHyperprior

from icmlib.codec import ans
from icmlib.codec.bitstream import compress_to_bytes, decompress_bytes, header_size
from icmlib.codec.model import (ICMCodec, decode_image, encode_image, likelihood_bits,
                          run_codec)
from icmlib.presets import get_preset

ROOT = Path(__file__).resolve().parents[1]


def smooth_image(h: int, w: int, seed: int) -> torch.Tensor:
    """A photo-like test image: smooth random colour fields plus fine noise."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(1, 3, h // 16 + 1, w // 16 + 1, generator=g)
    img = torch.nn.functional.interpolate(coarse, size=(h, w), mode="bicubic",
                                          align_corners=False)
    return (img + 0.03 * torch.randn(1, 3, h, w, generator=g)).clamp(0, 1)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t


def bench_transforms(ours, theirs, images, runs):
    """Median encode/decode seconds per image size for both codecs, interleaved."""
    rows = []
    for size, imgs in images.items():
        t = {k: [] for k in ("enc_ours", "enc_theirs", "dec_ours", "dec_theirs")}
        for x in imgs:                                    # warm-up
            for net in (ours, theirs):
                e = encode_image(net, x)
                decode_image(net, e["strings"], e["shape"], e["size"])
        for _ in range(runs):
            for x in imgs:
                for name, net in (("ours", ours), ("theirs", theirs)):
                    e, te = timed(lambda: encode_image(net, x))
                    _, td = timed(lambda: decode_image(net, e["strings"], e["shape"], e["size"]))
                    t[f"enc_{name}"].append(te)
                    t[f"dec_{name}"].append(td)
        med = {k: statistics.median(v) for k, v in t.items()}
        rows.append({"size": size, "images": len(imgs), "runs": runs, **med,
                     "encode_ratio": med["enc_ours"] / med["enc_theirs"],
                     "decode_ratio": med["dec_ours"] / med["dec_theirs"]})
    return rows


def bench_overhead(net, images):
    """Real .icm bits vs the likelihood estimate, per image."""
    rows = []
    for size, imgs in images.items():
        for x in imgs:
            data = compress_to_bytes(net, x)
            assert decompress_bytes(net, data).shape == x.shape[1:]
            with torch.no_grad():
                est = likelihood_bits(run_codec(net, x)["likelihoods"]).item()
            bits = 8 * len(data)
            rows.append({"size": size, "file_bits": bits, "estimate_bits": est,
                         "overhead": bits / est - 1,
                         "overhead_without_header": (bits - 8 * header_size(2)) / est - 1})
    return rows


def bench_ans(net, runs, n=50_000, seed=0):
    """Symbols/s of icmlib.codec.ans and CompressAI's coder, on the codec's real ŷ CDF tables
    with symbols drawn from those tables (so the entropy is realistic even for an
    untrained codec, whose latents are almost all zero)."""
    import numpy as np

    gc = net.gaussian_conditional
    cdfs = gc._quantized_cdf.numpy().astype(np.int64)
    lengths = gc._cdf_length.numpy().astype(np.int64)
    offsets = gc._offset.numpy().astype(np.int64)
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(cdfs), n)
    sym = np.empty(n, dtype=np.int64)
    for k in range(len(cdfs)):
        pmf = np.diff(cdfs[k, :lengths[k]]) / 2.0 ** 16
        sym[idx == k] = rng.choice(len(pmf), int((idx == k).sum()), p=pmf) + offsets[k]
    args = (sym.tolist(), idx.tolist(), cdfs.tolist(), lengths.tolist(), offsets.tolist())
    n = len(args[0])
    res = {"symbols": n}
    coders = {"icmlib.codec.ans": (ans.encode_with_indexes, ans.decode_with_indexes),
              "compressai": (compressai_ans.RansEncoder().encode_with_indexes,
                             compressai_ans.RansDecoder().decode_with_indexes)}
    streams = {}
    for name, (enc, dec) in coders.items():
        te, td = [], []
        for _ in range(runs):
            data, t1 = timed(lambda: enc(*args))
            out, t2 = timed(lambda: dec(data, *args[1:]))
            assert out == args[0]
            te.append(t1)
            td.append(t2)
        streams[name] = data
        res[name] = {"encode_symbols_per_s": n / statistics.median(te),
                     "decode_symbols_per_s": n / statistics.median(td), "bytes": len(data)}
    res["identical_bytes"] = streams["icmlib.codec.ans"] == streams["compressai"]
    return res


def markdown(result) -> str:
    lines = [f"# Codec benchmark on the CPU ({result['date']})", "",
             f"Command: `{result['command']}`  ",
             f"Commit: `{result['commit']}`; CPU: {result['cpu']}; torch {result['torch']}; "
             f"{result['threads']} threads; load average at start {result['load_start']}, "
             f"at end {result['load_end']}.  ",
             f"Codecs: ICMCodec(N={result['N']}, M={result['M']}) vs CompressAI "
             f"MeanScaleHyperprior(N={result['N']}, M={result['M']}); weights: "
             f"{result['weights']}.", "",
             "Other jobs shared the machine: compare the ratios (both codecs measured "
             "interleaved in the same run), not the absolute times.", "",
             "| image | encode ours (s) | encode CompressAI (s) | ratio | decode ours (s) | "
             "decode CompressAI (s) | ratio |", "|---|---|---|---|---|---|---|"]
    for r in result["transforms"]:
        lines.append(f"| {r['size']} | {r['enc_ours']:.3f} | {r['enc_theirs']:.3f} | "
                     f"{r['encode_ratio']:.2f} | {r['dec_ours']:.3f} | {r['dec_theirs']:.3f} | "
                     f"{r['decode_ratio']:.2f} |")
    lines += ["", "| image | file bits | likelihood bits | overhead | overhead w/o header |",
              "|---|---|---|---|---|"]
    for r in result["overhead"]:
        lines.append(f"| {r['size']} | {r['file_bits']} | {r['estimate_bits']:.0f} | "
                     f"{100 * r['overhead']:.2f} % | {100 * r['overhead_without_header']:.2f} % |")
    a = result["ans"]
    lines += ["", f"rANS on {a['symbols']} symbols drawn from the codec's ŷ CDF tables "
              f"(identical bytes from both coders: {a['identical_bytes']}):",
              "", "| coder | encode (symbols/s) | decode (symbols/s) | bytes |", "|---|---|---|---|"]
    for name in ("icmlib.codec.ans", "compressai"):
        lines.append(f"| {name} | {a[name]['encode_symbols_per_s']:,.0f} | "
                     f"{a[name]['decode_symbols_per_s']:,.0f} | {a[name]['bytes']} |")
    return "\n".join(lines) + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["256x256", "512x768"])
    parser.add_argument("--images", type=int, default=4, help="images per size")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--model", help="a trained codec checkpoint for 'ours'")
    parser.add_argument("--out", default=str(ROOT / "data" / "benchmarks" / "codec_cpu"))
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    load_start = os.getloadavg()[0]
    preset = get_preset("cpu")
    if args.model:
        from icmlib.codec.model import load_codec
        ours = load_codec(args.model)
        weights = f"ours from {args.model}, CompressAI's random init"
    else:
        torch.manual_seed(0)
        ours = ICMCodec(preset.codec_channels, preset.latent_channels).eval()
        ours.update(force=True)
        weights = "both random init (timings do not depend on training; rates do)"
    N, M = ours.config["N"], ours.config["M"]
    torch.manual_seed(0)
    theirs = MeanScaleHyperprior(N, M).eval()
    theirs.update(force=True)

    images = {}
    for k, s in enumerate(args.sizes):
        h, w = (int(v) for v in s.split("x"))
        images[s] = [smooth_image(h, w, seed=100 * k + i) for i in range(args.images)]

    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "commit": git_commit(ROOT), "cpu": cpu_model(), "torch": torch.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "threads": args.threads, "N": N, "M": M, "weights": weights,
              "load_start": round(load_start, 2)}
    result["transforms"] = bench_transforms(ours, theirs, images, args.runs)
    result["overhead"] = bench_overhead(ours, images)
    result["ans"] = bench_ans(ours, args.runs)
    result["load_end"] = round(os.getloadavg()[0], 2)

    text = markdown(result)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(text)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
