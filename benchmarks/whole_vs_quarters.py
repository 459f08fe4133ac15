"""Does a codec code a whole image as cheaply as its four quarters? (data/results/cpu/whole_vs_quarters.*)

A hyperprior codec cuts a 128 × 128 image into a 2 × 2 grid of side-information positions
(``STRIDE`` = 64 pixels each) and a 64 × 64 crop into one. The MSE codecs of the ``cpu``
recipe train on 64-pixel crops (``crop_size``), so their hyper-transforms never see a
neighbouring position; the ICM codecs train on whole images (``icm_crop_size``). A codec
that codes a whole image at more bits per pixel than the mean of its quarters, each coded
alone, is paying for that: the quarters have less context and should cost more, not less.

For each codec and rate point, on validation images: the likelihood estimate of the
rounded latents (what the rANS coder writes, within about 1 %) in bpp, for the whole image
and for the mean of its four quarters, and their ratio. The MSE baseline the reproduction
reports ends its training on whole images (``preset.mse_finish_steps``;
``icmlib.training.baseline_run``); it is measured beside the MSE codecs it starts from.
Run from the repository root with the book's cache:

    ICM_CACHE=.cache/book python benchmarks/whole_vs_quarters.py
"""
import torch
from study import header, run_study

from icmlib.codec import losses, run_codec
from icmlib.data import dataset_for
from icmlib.presets import get_preset
from icmlib.training import MSE_LOW_RATES, baseline_run, codec_at_rate, codec_run

IMAGES = 32
COMMAND = "ICM_CACHE=.cache/book python benchmarks/whole_vs_quarters.py"


def variants(preset):
    """(label, checkpoint, rate) of every codec and rate point measured."""
    out = []
    for codec_rate, rates in (("all", (0, 3)), ("low", (0,)), (MSE_LOW_RATES, (0, 1))):
        crops = codec_run(preset, None, "mse", codec_rate, progress=False)
        whole = baseline_run(preset, codec_rate, progress=False)
        for r in rates:
            out.append((f"MSE, 64-pixel crops ({codec_rate})", crops, r))
            out.append((f"MSE baseline, finished on whole images ({codec_rate})", whole, r))
    for codec_rate in ("all", "low"):
        icm = codec_run(preset, "detection", "dynamic", codec_rate, progress=False)
        out.append((f"ICM detection dynamic ({codec_rate})", icm, 0))
    return out


@torch.no_grad()
def bpp(net, images, quarter=None):
    """Mean over images of the rounded latents' estimated bpp (whole, or one quarter)."""
    total = 0.0
    for x in images:
        if quarter is not None:
            top, left = quarter
            x = x[..., top:top + 64, left:left + 64]
        total += float(losses.rate_bpp(run_codec(net, x)["likelihoods"], x.shape[-2] * x.shape[-1]))
    return total / len(images)


def measure(preset):
    val = dataset_for(preset, "val", train=False)
    images = [val[i][0][None] for i in range(IMAGES)]
    rows = []
    for label, ckpt, rate in variants(preset):
        net = codec_at_rate(ckpt, rate).eval()
        whole = bpp(net, images)
        quarters = sum(bpp(net, images, q) for q in ((0, 0), (0, 64), (64, 0), (64, 64))) / 4
        rows.append({"codec": label, "rate": rate, "whole_bpp": whole,
                     "quarters_bpp": quarters, "ratio": whole / quarters})
        print(rows[-1], flush=True)
    return rows


def markdown(rows, meta):
    lines = header("A whole image against its four quarters (validation images)", meta,
                   f"{IMAGES} validation images of 128 × 128; estimated bpp of the rounded latents")
    lines += ["| codec | rate | whole image bpp | mean of its quarters bpp | whole / quarters |",
              "|---|---|---|---|---|"]
    lines += [f"| {r['codec']} | {r['rate']} | {r['whole_bpp']:.4f} | {r['quarters_bpp']:.4f} | "
              f"{r['ratio']:.2f} |" for r in rows]
    return "\n".join(lines) + "\n"


def main():
    run_study("whole_vs_quarters", COMMAND, 2, lambda: measure(get_preset("cpu")), markdown)


if __name__ == "__main__":
    main()
