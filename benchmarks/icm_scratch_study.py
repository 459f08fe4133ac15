"""The paper's recipe: an ICM codec trained from scratch with the dynamic schedule
(data/results/cpu/icm_scratch_study.*)

Every ICM codec of the ``cpu`` recipe is fine-tuned from an MSE codec for ``icm_steps``
(3000): the task loss meets a codec that has already learnt, over 24000 MSE steps, to spend
its bits on every pixel. The paper trains each ICM codec with its dynamic loss weighting,
which starts with the MSE term alone and hands over to the task term (the ``Dynamic``
strategy: MSE only for the first 10 % of the steps, the task at full strength from 50 %).
Does a codec that meets the task loss early, and trains with it for far longer, save more
against the MSE baseline? The issue names this lever; it had not been measured.

This study trains the detection codec (dynamic, rates ``rd_lambdas``) from random weights
for ``preset.codec_steps`` (20000, the base MSE codec's own budget from scratch), then
measures on validation images (recipes are chosen on validation data; the test split
chooses nothing), with the same code as the background oracle
(:func:`icmlib.evaluation.oracle.oracle_savings`):

* the MSE baseline (every shipped rate group), the shipped fine-tuned codec and the new one:
  real bpp, PSNR and box mAP at each rate point;
* each ICM codec's BD-rate against the baseline over the lower half, the upper half and the
  whole of the box mAP range every curve covers;
* the new codec's validation log over training (bpp and box mAP against steps).

    ICM_CACHE=.cache/book python benchmarks/icm_scratch_study.py

The codec trains into ``$ICM_CACHE/runs/study/icm-from-scratch`` (resumable from its
checkpoints: run the command again after an interruption) unless it is there already;
66 min on 2 threads, then 2 min of measuring. ``--figure`` redraws the figure from the
committed rows.
"""
import json
import sys

import torch
from study import OUT, header, run_study, savings_lines

from icmlib.cache import cache_dir
from icmlib.data import dataset_for
from icmlib.evaluation.oracle import BASELINE, ORIGINAL, oracle_savings, plot_oracle_curves
from icmlib.presets import get_preset
from icmlib.tasks import FrozenTask, evaluate_task, task_network
from icmlib.training import baseline_run, codec_at_rate, codec_run, resolve_rate, train_codec
from icmlib.training.validation import validate_codec

IMAGES = 64
COMMAND = "ICM_CACHE=.cache/book python benchmarks/icm_scratch_study.py"
TASK, STRATEGY = "detection", "dynamic"
FINE_TUNED = "ICM dynamic, fine-tuned from the MSE codec (shipped)"
SCRATCH = "ICM dynamic, from scratch (the paper's schedule)"


def from_scratch(preset):
    """The detection codec trained from random weights with the dynamic schedule (trained
    here, resumably, if not cached). Validated every 1000 steps, so its curve over training
    is drawn without slowing the run much."""
    return train_codec(preset.replace(train_threads=2, icm_val_every=1000), TASK, STRATEGY,
                       "all", steps=preset.codec_steps, init_from=None, resume=True,
                       progress=True, out_dir=cache_dir("runs", "study", "icm-from-scratch"))


def codecs(preset):
    """(name, [(rate group, checkpoint)]) of every codec compared."""
    yield BASELINE, [(g, baseline_run(preset, g, progress=False))
                     for g in ("mse-low", "low", "mse-mid", "all")]
    yield FINE_TUNED, [("all", codec_run(preset, TASK, STRATEGY, "all", progress=False))]
    yield SCRATCH, [("all", from_scratch(preset))]


@torch.no_grad()
def measure(preset):
    val = dataset_for(preset, "val", train=False)
    frozen = FrozenTask(task_network(TASK, preset, progress=False), TASK)
    images = [val[i][0] for i in range(IMAGES)]
    rows = [{"codec": "uncompressed", "input": ORIGINAL, "bpp": None, "psnr": None,
             "map": float(evaluate_task(frozen, TASK, val, images=images,
                                        max_images=IMAGES)["score"]), "val_log": []}]
    for name, groups in codecs(preset):
        for group, ckpt in groups:
            for point in range(len(resolve_rate(preset, group)[1])):
                m = validate_codec(codec_at_rate(ckpt, point), val, IMAGES, frozen, TASK,
                                   images=images)
                rows.append({"codec": name, "input": ORIGINAL, "rates": group, "point": point,
                             "bpp": m["bpp"], "psnr": m["psnr"], "map": m["task_score"],
                             "val_log": training_curve(ckpt, point) if name == SCRATCH else []})
                print({k: v for k, v in rows[-1].items() if k != "val_log"}, flush=True)
    return rows


def training_curve(ckpt, point):
    """``[(step, bpp, box mAP)]`` of one rate point from a run's validation log."""
    return [(int(r["step"]), round(float(r["bpp"]), 4), round(float(r["task_bbox_map"]), 3))
            for r in ckpt["logs"]["val"] if int(r["rate_index"]) == point]


def markdown(rows, meta):
    lines = header("An ICM codec from scratch, the paper's dynamic schedule (detection; "
                   "validation images)", meta,
                   f"{IMAGES} validation images; box mAP@[.5:.95] of the frozen detector on "
                   f"the decoded images", "new codec: rates rd_lambdas, 20000 steps from random "
                   "weights (MSE only to step 2000, the task at full strength from step 10000, "
                   "learning rate ×0.1 at step 16000); figure: icm_scratch_study.png")
    lines += savings_lines(oracle_savings(rows))
    lines += ["", "Every point:", "", "| codec | rates | point | bpp | PSNR | box mAP |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['codec']} | {r['rates']} | {r['point']} | {r['bpp']:.4f} | "
              f"{r['psnr']:.2f} | {r['map']:.3f} |" for r in rows if r["bpp"] is not None]
    lines += ["", "The new codec over training (16 validation images; step: bpp / box mAP):", "",
              "| rate point | log |", "|---|---|"]
    lines += [f"| {r['point']} | " + ", ".join(f"{s}: {b:.3f} / {a:.2f}" for s, b, a in r["val_log"])
              + " |" for r in rows if r["codec"] == SCRATCH]
    lines += ["", "Uncompressed validation images: box mAP "
              + ", ".join(f"{r['map']:.3f}" for r in rows if r["codec"] == "uncompressed") + "."]
    return "\n".join(lines) + "\n"


def figure(rows):
    """The curves against the baseline, and the new codec's bpp and mAP over training."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax, ax_bpp, ax_map) = plt.subplots(1, 3, figsize=(15, 4.5))
    plot_oracle_curves(rows, ax=ax, metric_label="box mAP@[.5:.95] (detection)")
    ax.set_title("Fine-tuned from the MSE codec, or trained from scratch", fontsize=10)
    for r in (r for r in rows if r["codec"] == SCRATCH):
        steps, bpp, acc = zip(*r["val_log"])
        ax_bpp.plot(steps, bpp, marker=".", label=f"rate point {r['point']}")
        ax_map.plot(steps, acc, marker=".", label=f"rate point {r['point']}")
    for a, label in ((ax_bpp, "bits per pixel"), (ax_map, "box mAP (16 validation images)")):
        a.axvspan(0, 2000, color="0.9", label="MSE only")
        a.axvline(10000, color="0.5", ls=":", label="task at full strength")
        a.set(xlabel="training step", ylabel=label, xticks=range(0, 20001, 5000))
        a.set_title(f"from scratch: {label.split(' (')[0]} over training", fontsize=10)
        a.legend(fontsize=8)
        a.grid(alpha=0.3)
    ax_bpp.set_yscale("log")
    ticks = (0.05, 0.07, 0.1, 0.15, 0.2)
    ax_bpp.set_yticks(ticks, [f"{t:g}" for t in ticks])
    ax_bpp.yaxis.set_minor_formatter(plt.NullFormatter())
    fig.tight_layout()
    fig.savefig(OUT / "icm_scratch_study.png", dpi=100)
    plt.close(fig)


def main(argv=None):
    args = sys.argv[1:] if argv is None else argv
    if args == ["--figure"]:  # redraw the figure from the committed rows; nothing trains
        figure(json.loads((OUT / "icm_scratch_study.json").read_text())["rows"])
        return
    if args:
        sys.exit(f"usage: icm_scratch_study.py [--figure] (got {' '.join(args)})")
    rows = run_study("icm_scratch_study", COMMAND, 2, lambda: measure(get_preset("cpu")),
                     markdown)
    figure(rows)


if __name__ == "__main__":
    main()
