"""Benchmark: our codec vs CompressAI's MeanScaleHyperprior on the CPU, and icmlib.codec.ans.

Measures, on the same images and in the same process, the models *interleaved* (A, B, C,
then C, B, A ... for every image and round), so that machine load hits them alike --
compare the *ratios* (medians over rounds of the ratios within a round), not the absolute
times:

* encode and decode time per image of ``ICMCodec(N, M)`` against CompressAI's
  ``MeanScaleHyperprior(N, M)`` as CompressAI runs it (issue 11's target: both ratios
  ≤ 1.5 on one thread); against the same with its weights channels-last (the layout our
  codec runs in, which CompressAI could use too); and against two residual models of
  equal N, M run by CompressAI's own code (float32 hyperprior, its index loop, its
  synthesis): ``residual`` has cheng2020-anchor's transforms (one residual block per
  stage, its latent widened to M), ``same`` exactly our transforms -- the arithmetic held
  equal, so the ratio to it is what our coding path (exact hyperprior, table search,
  channels-last, one-thread synthesis) costs or saves;
* our ``.icm`` decode (``decompress_bytes``: the streams read by the checked, pure-Python
  ``icmlib.codec.ans``), the path ``icm decode`` takes;
* each model's transform FLOPs (encoder g_a + h_a, decoder h_s + g_s), to tell arithmetic
  from overhead;
* the ``.icm`` file's bits against the likelihood estimate (overhead, header included);
* ``icmlib.codec.ans`` symbols per second against CompressAI's C++ coder, on the real symbols
  and CDF tables of one image (both produce the same bytes).

Writes a markdown table and ``data/benchmarks/codec_cpu.{json,md}`` with the command,
git commit, CPU model, torch version, date and machine load (``uptime``).

    python benchmarks/bench_codec.py                       # random-init codecs, N, M of the cpu preset
    python benchmarks/bench_codec.py --model CKPT          # a trained codec (rates meaningful)
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

from icmlib.evaluation import cpu_model, git_commit
from compressai import ans as compressai_ans
from compressai.layers import ResidualBlock, ResidualBlockUpsample, conv3x3
from compressai.models import Cheng2020Anchor, MeanScaleHyperprior
from torch.utils.flop_counter import FlopCounterMode

from icmlib.codec import (ICMCodec, compress_to_bytes, decode_image, decompress_bytes,
                          encode_image, header_size, likelihood_bits, pad, resolve_codec,
                          run_codec)
from icmlib.codec import ans
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


def residual_reference(N: int, M: int, blocks: int = 1) -> MeanScaleHyperprior:
    """CompressAI's ``MeanScaleHyperprior(N, M)`` with cheng2020-anchor's residual transforms
    (``Cheng2020Anchor(N)``'s g_a and g_s, their latent ends widened to M channels), keeping
    ``blocks`` of its residual blocks per stage (1 in cheng2020-anchor, 0 in ours)."""
    cheng = Cheng2020Anchor(N)
    g_a, g_s = list(cheng.g_a), list(cheng.g_s)
    g_a[-1] = conv3x3(N, M, stride=2)
    g_s[0], g_s[1] = ResidualBlock(M, M), ResidualBlockUpsample(M, N, 2)
    if not blocks:
        g_a = [m for m in g_a if not isinstance(m, ResidualBlock)]
        g_s = [m for m in g_s if not isinstance(m, ResidualBlock)]
    net = MeanScaleHyperprior(N, M)
    net.g_a, net.g_s = torch.nn.Sequential(*g_a), torch.nn.Sequential(*g_s)
    return net


def transform_flops(net, x) -> dict:
    """FLOPs of the encoder's transforms (g_a, h_a) and the decoder's (h_s, g_s) on ``x``."""
    def count(fn, *args):
        with FlopCounterMode(display=False) as counter:
            fn(*args)
        return counter.get_total_flops()

    with torch.no_grad():
        y = net.g_a(pad(x))
        z = net.h_a(y)
        return {"encode": count(net.g_a, pad(x)) + count(net.h_a, y),
                "decode": count(net.h_s, torch.round(z)) + count(net.g_s, torch.round(y))}


def _time_models(models, x, times):
    """One interleaved round on image ``x``: each model encodes, then decodes; ours also
    decodes its .icm file (checked rANS)."""
    for name, net in models.items():
        e, te = timed(lambda: encode_image(net, x))
        _, td = timed(lambda: decode_image(net, e["strings"], e["shape"], e["size"]))
        times[f"enc_{name}"].append(te)
        times[f"dec_{name}"].append(td)
        if name == "ours":
            data = compress_to_bytes(net, x)
            _, tf = timed(lambda: decompress_bytes(net, data))
            times["dec_file_ours"].append(tf)


def bench_transforms(models, images, runs):
    """Median encode/decode seconds per image size for every model, interleaved."""
    rows = []
    for size, imgs in images.items():
        times = {f"{k}_{n}": [] for n in models for k in ("enc", "dec")}
        times["dec_file_ours"] = []
        for x in imgs:                                    # warm-up
            _time_models(models, x, {k: [] for k in times})
        for run in range(runs):                          # every other round in reverse order
            order = dict(reversed(models.items())) if run % 2 else models
            for x in imgs:
                _time_models(order, x, times)
        med = {k: statistics.median(v) for k, v in times.items()}
        row = {"size": size, "images": len(imgs), "runs": runs, **med,
               "flops": {n: transform_flops(net, imgs[0]) for n, net in models.items()}}
        for n in models:
            if n != "ours":
                row[f"encode_ratio_{n}"] = _paired_ratio(times["enc_ours"], times[f"enc_{n}"])
                row[f"decode_ratio_{n}"] = _paired_ratio(times["dec_ours"], times[f"dec_{n}"])
        row["file_decode_ratio_theirs"] = _paired_ratio(times["dec_file_ours"], times["dec_theirs"])
        rows.append(row)
    return rows


def _paired_ratio(ours, theirs) -> float:
    """The median, over rounds, of the ratio of two times measured in the same round on the
    same image: the load of that moment cancels, where a ratio of medians would mix moments."""
    return statistics.median(a / b for a, b in zip(ours, theirs))


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


#: the models timed against ours, as the tables name them
REFERENCES = {"theirs": "CompressAI MeanScaleHyperprior",
              "theirs_cl": "MeanScaleHyperprior, channels-last",
              "residual": "residual (cheng2020-anchor transforms)",
              "same": "same transforms, CompressAI's code"}


def _time_table(result, kind: str) -> list:
    """Markdown rows of encode (``kind="enc"``) or decode seconds and ratios."""
    names = ["ours", *REFERENCES]
    head = ["image", *(f"{REFERENCES.get(n, n)} (s)" for n in names),
            *(f"ours / {n}" for n in REFERENCES)]
    if kind == "dec":
        head += ["ours, .icm file (s)", "file / MeanScaleHyperprior"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in result["transforms"]:
        word = "encode" if kind == "enc" else "decode"
        cells = [r["size"], *(f"{r[f'{kind}_{n}']:.3f}" for n in names),
                 *(f"**{r[f'{word}_ratio_{n}']:.2f}**" for n in REFERENCES)]
        if kind == "dec":
            cells += [f"{r['dec_file_ours']:.3f}", f"{r['file_decode_ratio_theirs']:.2f}"]
        lines.append("| " + " | ".join(cells) + " |")
    return lines


def _flops_table(result) -> list:
    lines = ["| image | model | encoder GFLOPs (g_a + h_a) | decoder GFLOPs (h_s + g_s) |",
             "|---|---|---|---|"]
    for r in result["transforms"]:
        for n, f in r["flops"].items():
            lines.append(f"| {r['size']} | {REFERENCES.get(n, n)} | {f['encode'] / 1e9:.2f} | "
                         f"{f['decode'] / 1e9:.2f} |")
    return lines


def markdown(result) -> str:
    lines = [f"# Codec benchmark on the CPU ({result['date']})", "",
             f"Command: `{result['command']}`  ",
             f"Commit: `{result['commit']}`; CPU: {result['cpu']}; torch {result['torch']}; "
             f"{result['threads']} threads.  ",
             f"Load: `{result['uptime_start']}` at start, `{result['uptime_end']}` at end.  ",
             f"Codecs: ICMCodec(N={result['N']}, M={result['M']}) against CompressAI's "
             f"MeanScaleHyperprior(N={result['N']}, M={result['M']}) and two residual models "
             f"of the same N, M run by CompressAI's code (cheng2020-anchor's transforms; our "
             f"transforms); weights: {result['weights']}.", "",
             "Other jobs shared the machine: compare the ratios, not the absolute times. The "
             "models run interleaved, image by image, in one process (every other round in "
             "reverse order); times are medians, a ratio is the median over rounds of the "
             "ratio of two times measured in the same round.",
             "", "Encode:", "", *_time_table(result, "enc"), "", "Decode:", "",
             *_time_table(result, "dec"), "", "Arithmetic of the transforms:", "",
             *_flops_table(result)]
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


def uptime() -> str:
    """``uptime``'s line (load averages over 1, 5, 15 minutes), or the load averages alone."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "load average: " + ", ".join(f"{v:.2f}" for v in os.getloadavg())


def build_models(model_path, preset):
    """Ours (from a checkpoint, or random init) and the references, random init, updated."""
    if model_path:
        ours = resolve_codec(model_path)  # a variable-rate codec: its highest quality
        weights = f"ours from {model_path}, the references' random init"
    else:
        torch.manual_seed(0)
        ours = ICMCodec(preset.codec_channels, preset.latent_channels).eval()
        ours.update(force=True)
        weights = "all random init (timings do not depend on training; rates do)"
    N, M = ours.config["N"], ours.config["M"]
    models = {"ours": ours}
    channels_last = torch.channels_last
    for name, make in (("theirs", lambda: MeanScaleHyperprior(N, M)),
                       ("theirs_cl", lambda: MeanScaleHyperprior(N, M).to(memory_format=channels_last)),
                       ("residual", lambda: residual_reference(N, M, blocks=1)),
                       ("same", lambda: residual_reference(N, M, ours.config["blocks"]))):
        torch.manual_seed(0)
        models[name] = make().eval()
        models[name].update(force=True)
    return models, weights


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
    uptime_start = uptime()
    models, weights = build_models(args.model, get_preset("cpu"))
    ours = models["ours"]
    images = {}
    for k, s in enumerate(args.sizes):
        h, w = (int(v) for v in s.split("x"))
        images[s] = [smooth_image(h, w, seed=100 * k + i) for i in range(args.images)]

    result = {"command": " ".join([Path(sys.executable).name, *sys.argv]),
              "commit": git_commit(ROOT), "cpu": cpu_model(), "torch": torch.__version__,
              "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
              "threads": args.threads, "N": ours.config["N"], "M": ours.config["M"],
              "weights": weights, "uptime_start": uptime_start}
    result["transforms"] = bench_transforms(models, images, args.runs)
    result["overhead"] = bench_overhead(ours, images)
    result["ans"] = bench_ans(ours, args.runs)
    result["uptime_end"] = uptime()

    text = markdown(result)
    print(text)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(result, indent=2))
    out.with_suffix(".md").write_text(text)
    print(f"wrote {out.with_suffix('.json')} and {out.with_suffix('.md')}")


if __name__ == "__main__":
    main()
