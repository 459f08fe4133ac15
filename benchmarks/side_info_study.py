"""How much of a codec's rate is side information? (data/results/cpu/side_info_study.*)

At low rates the ICM codecs save less against the MSE baseline than at high ones
(chapter 9, ``evaluation.saving_by_accuracy``). Every codec here is a hyperprior model: its
file carries the main stream (the latent ŷ, which the task loss can reshape) and the side
stream (ẑ, the hyperprior that sets ŷ's scales), and both codecs pay for ẑ. This study
encodes validation images with the shipped MSE baseline's and detection/fixed ICM codecs'
rate points and splits their real bytes into the two streams.

    ICM_CACHE=.cache/book python benchmarks/side_info_study.py
"""
import torch
from study import header, run_study

from icmlib.codec.model import encode_image
from icmlib.data import dataset_for
from icmlib.presets import get_preset
from icmlib.training import baseline_run, codec_at_rate, codec_run, resolve_rate

IMAGES = 32
COMMAND = "ICM_CACHE=.cache/book python benchmarks/side_info_study.py"


def codecs(preset):
    """(name, rate group, checkpoint) of every MSE baseline and detection/fixed ICM codec."""
    for group in ("mse-low", "low", "mse-mid", "all"):
        yield "MSE baseline", group, baseline_run(preset, group, progress=False)
    for group in ("low", "all"):
        yield "ICM fixed (detection)", group, codec_run(preset, "detection", "fixed", group,
                                                        progress=False)


@torch.no_grad()
def streams(net, images):
    """(main, side) bits per pixel over ``images``, from the bytes each stream wrote."""
    main = side = pixels = 0
    for x in images:
        coded = encode_image(net, x)
        main, side = main + len(coded["strings"][0]), side + len(coded["strings"][1])
        pixels += x.shape[-2] * x.shape[-1]
    return 8 * main / pixels, 8 * side / pixels


def measure(preset):
    val = dataset_for(preset, "val", train=False)
    images = [val[i][0].unsqueeze(0) for i in range(IMAGES)]
    rows = []
    for name, group, ckpt in codecs(preset):
        for point in range(len(resolve_rate(preset, group)[1])):
            main, side = streams(codec_at_rate(ckpt, point), images)
            rows.append({"codec": name, "rates": group, "point": point, "bpp": main + side,
                         "main_bpp": main, "side_bpp": side})
            print(rows[-1], flush=True)
    return sorted(rows, key=lambda r: (r["codec"], r["bpp"]))


def markdown(rows, meta):
    lines = header("Side information (ẑ) against the main stream (ŷ), real bytes", meta,
                   f"{IMAGES} validation images, each coded alone")
    lines += ["| codec | rates | point | bpp | main (ŷ) | side (ẑ) | side share |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['codec']} | {r['rates']} | {r['point']} | {r['bpp']:.4f} | "
              f"{r['main_bpp']:.4f} | {r['side_bpp']:.4f} | {r['side_bpp'] / r['bpp']:.1%} |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main():
    run_study("side_info_study", COMMAND, 1, lambda: measure(get_preset("cpu")), markdown)


if __name__ == "__main__":
    main()
