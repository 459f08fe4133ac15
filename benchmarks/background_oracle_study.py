"""What could dropping the background save? (data/results/cpu/background_oracle_<task>.*)

Against the MSE baseline the ICM codecs save about 30 % of the bits at equal task mAP, and
only 16–21 % over the lower half of the accuracy range (chapter 9). The issue asks for
40 %. How much is there to save on this world? An ICM codec saves by spending less where
the task network does not look, and the first such place is the background. This study
gives the MSE baseline an oracle (:mod:`icmlib.evaluation.oracle`), images that keep what
the task needs and drop the rest before coding:

* ``flat``: everything farther than ``MARGIN`` pixels from a ground-truth object mask
  replaced by the background's mean colour;
* ``blur``: the same region blurred instead (the coarse context stays);
* ``shapes``: the flat background, and each object painted its own mean colour.

The frozen task network is scored on the decoded images against the same ground truth.
An oracle's BD-rate against the baseline on the real images is what a codec could save by
dropping that detail perfectly while coding the rest as the baseline does. The ICM codecs
are measured beside it on the same validation images (diagnoses use validation data; the
test split chooses nothing), and the ICM fixed codec is also given the flat oracle, which
says how much background its own bits still carry.

    ICM_CACHE=.cache/book python benchmarks/background_oracle_study.py [detection|instance]

Every codec is a shipped one (nothing trains); about 4 min on 2 threads.
"""
import sys

import torch
from study import OUT, header, run_study, saving_cells

from icmlib.data import dataset_for
from icmlib.evaluation.oracle import (BASELINE, ORIGINAL, flat_shapes, oracle_savings,
                                     plot_oracle_curves, without_background)
from icmlib.presets import get_preset
from icmlib.tasks import FrozenTask, evaluate_task, task_network
from icmlib.training import baseline_run, codec_at_rate, codec_run, resolve_rate
from icmlib.training.validation import validate_codec

IMAGES = 64
MARGIN = 2
COMMAND = "ICM_CACHE=.cache/book python benchmarks/background_oracle_study.py"
METRIC = {"detection": "box mAP", "instance": "mask mAP"}
#: the oracle inputs: how each replaces what the task network does not need
ORACLES = {"flat": lambda x, t: without_background(x, t, "flat", margin=MARGIN),
           "blur": lambda x, t: without_background(x, t, "blur", margin=MARGIN),
           "shapes": flat_shapes}


def codecs(preset, task):
    """(name, inputs it is measured on, [(rate group, checkpoint)]) of every codec compared."""
    baseline = [(g, baseline_run(preset, g, progress=False))
                for g in ("mse-low", "low", "mse-mid", "all")]
    yield BASELINE, (ORIGINAL, *ORACLES), baseline
    for strategy in ("fixed", "dynamic", "auto"):
        fills = (ORIGINAL, "flat") if strategy == "fixed" else (ORIGINAL,)
        yield (f"ICM {strategy}", fills,
               [(g, codec_run(preset, task, strategy, g, progress=False)) for g in ("low", "all")])


def inputs(val, fill):
    """The first IMAGES validation images, as they are or as the oracle ``fill`` makes them."""
    items = [val[i] for i in range(IMAGES)]
    if fill == ORIGINAL:
        return [x for x, _ in items]
    return [ORACLES[fill](x, target) for x, target in items]


@torch.no_grad()
def measure(preset, task):
    val = dataset_for(preset, "val", train=False)
    frozen = FrozenTask(task_network(task, preset, progress=False), task)
    images = {fill: inputs(val, fill) for fill in (ORIGINAL, *ORACLES)}
    rows = [{"codec": "uncompressed", "input": fill, "bpp": None, "psnr": None,
             "map": float(evaluate_task(frozen, task, val, images=images[fill],
                                        max_images=IMAGES)["score"])} for fill in images]
    print(rows, flush=True)
    for name, fills, groups in codecs(preset, task):
        for group, ckpt in groups:
            for point in range(len(resolve_rate(preset, group)[1])):
                net = codec_at_rate(ckpt, point)
                for fill in fills:
                    m = validate_codec(net, val, IMAGES, frozen, task, images=images[fill])
                    rows.append({"codec": name, "input": fill, "rates": group, "point": point,
                                 "bpp": m["bpp"], "psnr": m["psnr"], "map": m["task_score"]})
                    print(rows[-1], flush=True)
    return rows


def markdown(task, rows, meta):
    metric = METRIC[task]
    lines = header(f"Dropping the background: an oracle against the ICM codecs ({task})", meta,
                   f"{IMAGES} validation images; {metric}@[.5:.95] of the frozen {task} network "
                   f"on the decoded images against the original ground truth",
                   f"oracle inputs: everything farther than {MARGIN} px from an object mask "
                   f"replaced by the background's mean colour (flat) or a Gaussian blur, "
                   f"σ = 4 px (blur); shapes: the flat background and every object painted "
                   f"its mean colour", f"figure: background_oracle_{task}.png")
    lines += ["Uncompressed inputs:", "", f"| input | {metric} |", "|---|---|"]
    lines += [f"| {r['input']} | {r['map']:.3f} |" for r in rows if r["codec"] == "uncompressed"]
    savings = oracle_savings(rows)
    lo, hi = savings[0]["range"]
    lines += ["", f"BD-rate against the MSE baseline on the real images, at equal {metric} "
              "(negative: fewer bits), over the lower half, the upper half and the whole of "
              f"the {metric} range every curve covers, {lo:.3f}–{hi:.3f}:", "",
              "| codec | input | lower half | upper half | whole range |", "|---|---|---|---|---|"]
    lines += [f"| {r['codec']} | {r['input']} | " + " | ".join(saving_cells(r)) + " |"
              for r in savings]
    lines += ["", "Every point:", "", "| codec | input | rates | point | bpp | PSNR (to its input) "
              f"| {metric} |", "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['codec']} | {r['input']} | {r['rates']} | {r['point']} | {r['bpp']:.4f} | "
              f"{r['psnr']:.2f} | {r['map']:.3f} |" for r in rows if r["codec"] != "uncompressed"]
    return "\n".join(lines) + "\n"


def figure(task, rows):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = plot_oracle_curves(rows, metric_label=f"{METRIC[task]}@[.5:.95] ({task})")
    ax.figure.tight_layout()
    ax.figure.savefig(OUT / f"background_oracle_{task}.png", dpi=110)
    plt.close(ax.figure)


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if any(a in ("-h", "--help") for a in args):
        print(__doc__)
        return
    if len(args) > 1 or (args and args[0] not in METRIC):
        sys.exit(f"usage: background_oracle_study.py [{'|'.join(METRIC)}] (got {' '.join(args)})")
    task = args[0] if args else "detection"
    rows = run_study(f"background_oracle_{task}", " ".join([COMMAND, task]), 2,
                     lambda: measure(get_preset("cpu"), task),
                     lambda rows, meta: markdown(task, rows, meta))
    figure(task, rows)


if __name__ == "__main__":
    main()
