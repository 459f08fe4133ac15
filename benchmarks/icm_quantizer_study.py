"""What the task network sees while an ICM codec trains: noisy latents or the decoded image?
(data/results/cpu/icm_quantizer_study.*)

An ICM codec trains, as CompressAI's models do, with additive uniform noise in place of
rounding: ŷ = y + u feeds the rate term *and* the synthesis, so the frozen task network is
trained against images decoded from noisy latents. What is coded is rounded. At low rates
the two differ: on 64 validation images the shipped detection codec (fixed weighting) at
its lowest point scores box mAP 0.393 on its noisy-latent images and 0.347 on the images it
really decodes (a probe of this study's ``noise_map``). The task term optimises the first.
The "mixed" quantization of Minnen & Singh (2020) keeps the noise for the rate and feeds the
synthesis y rounded around its predicted mean, as decoded, with a straight-through gradient
(``icm_synthesis_quantizer="ste"``; ``ICMCodec.synthesis_quantizer``).

This study trains the detection codecs with fixed weighting (rates ``rd_lambdas`` and
``low_rd_lambdas``) that way, from the same MSE codecs and for the same steps as the
shipped ones. The MSE baseline gets the same chance: its finishing stage on whole images
(``mse_finish_steps``) trained again with rounded ŷ to the synthesis
(``baseline_synthesis_quantizer="ste"``), from the same crop-trained MSE codecs. Then it
measures on validation images (recipes are chosen on validation data;
the test split chooses nothing), with the background oracle's code
(:func:`icmlib.evaluation.oracle.oracle_savings`):

* both MSE baselines (every rate group), the shipped ICM codec and the new one: real bpp,
  PSNR and box mAP at each rate point, and the box mAP on the noisy-latent images that
  training sees (``noise_map``);
* each codec's BD-rate against each baseline over the lower half, the upper half and the
  whole of the box mAP range every curve of the comparison covers.

    ICM_CACHE=.cache/book python benchmarks/icm_quantizer_study.py [--task instance]

``--task instance`` trains and measures the instance-segmentation codecs instead (mask mAP;
``icm_quantizer_study_instance.*``); the baselines are the same codecs.

The codecs train into ``$ICM_CACHE/runs/codec/<key>`` (resumable: run the command again
after an interruption) unless they are there already; on 2 threads about 17 min for the
ICM codecs and 23 min for the baseline's (two of its parents are not shipped and train
first), then 3 min of measuring.
"""
import sys

import torch
from study import header, run_study, savings_lines, task_and_args

from icmlib.codec import run_codec
from icmlib.data import dataset_for
from icmlib.evaluation.oracle import BASELINE, ORIGINAL, oracle_savings
from icmlib.presets import get_preset
from icmlib.tasks import FrozenTask, evaluate_task, task_network
from icmlib.training import baseline_run, codec_at_rate, codec_run, resolve_rate
from icmlib.training.validation import validate_codec

IMAGES = 64
COMMAND = "ICM_CACHE=.cache/book python benchmarks/icm_quantizer_study.py"
STRATEGY = "fixed"
METRIC = {"detection": ("box mAP", "detector"), "instance": ("mask mAP", "instance network")}
ICM_GROUPS = ("low", "all")
SHIPPED = "ICM fixed, noisy ŷ to the synthesis (shipped)"
STE = "ICM fixed, rounded ŷ to the synthesis (straight-through)"
BASELINE_STE = "MSE baseline, finished with rounded ŷ to the synthesis"
BASELINE_GROUPS = ("mse-low", "low", "mse-mid", "all")


def codecs(preset, task):
    """(name, [(rate group, checkpoint)]) of every codec compared; the new ones are trained
    here (resumably) if not cached."""
    ste = preset.replace(icm_synthesis_quantizer="ste", baseline_synthesis_quantizer="ste",
                         train_threads=2)
    yield BASELINE, [(g, baseline_run(preset, g, progress=False)) for g in BASELINE_GROUPS]
    yield BASELINE_STE, [(g, baseline_run(ste, g, progress=True)) for g in BASELINE_GROUPS]
    yield SHIPPED, [(g, codec_run(preset, task, STRATEGY, g, progress=False))
                    for g in ICM_GROUPS]
    yield STE, [(g, codec_run(ste, task, STRATEGY, g, progress=True)) for g in ICM_GROUPS]


@torch.no_grad()
def noise_map(net, frozen, val, images, task):
    """The task's mAP on the images decoded from noisy latents (the codec in training mode): what
    the task term sees while a codec trains with ``synthesis_quantizer="noise"``."""
    torch.manual_seed(0)
    net.train()
    try:
        decoded = [run_codec(net, x[None])["x_hat"][0].clamp(0, 1) for x in images]
    finally:
        net.eval()
    return float(evaluate_task(frozen, task, val, images=decoded, max_images=IMAGES)["score"])


def measure(preset, task):
    val = dataset_for(preset, "val", train=False)
    frozen = FrozenTask(task_network(task, preset, progress=False), task)
    images = [val[i][0] for i in range(IMAGES)]
    with torch.no_grad():
        score = evaluate_task(frozen, task, val, images=images, max_images=IMAGES)["score"]
    rows = [{"codec": "uncompressed", "input": ORIGINAL, "bpp": None, "psnr": None,
             "map": float(score)}]
    for name, groups in codecs(preset, task):
        for group, ckpt in groups:
            for point in range(len(resolve_rate(preset, group)[1])):
                net = codec_at_rate(ckpt, point)
                m = validate_codec(net, val, IMAGES, frozen, task, images=images)
                rows.append({"codec": name, "input": ORIGINAL, "rates": group, "point": point,
                             "bpp": m["bpp"], "psnr": m["psnr"], "map": m["task_score"],
                             "noise_map": noise_map(net, frozen, val, images, task)})
                print(rows[-1], flush=True)
    return rows


def markdown(rows, meta, task="detection"):
    metric, network = METRIC[task]
    lines = header("What the synthesis sees while an ICM codec trains: noisy or rounded ŷ "
                   f"({task}, fixed weighting; validation images)", meta,
                   f"{IMAGES} validation images; {metric}@[.5:.95] of the frozen {network} on "
                   f"the decoded images", "new codecs: the shipped recipe with "
                   "icm_synthesis_quantizer=ste, rates low_rd_lambdas and rd_lambdas, from the "
                   "same MSE codecs for the same steps")
    for baseline, other in ((BASELINE, BASELINE_STE), (BASELINE_STE, BASELINE)):
        lines += savings_table(rows, baseline, other, metric)
    lines += ["", f"Every point (noise: {metric} on the images decoded from noisy latents, what "
              "a codec trained on noise trains on):", "",
              f"| codec | rates | point | bpp | PSNR | {metric} | noise |",
              "|---|---|---|---|---|---|---|"]
    lines += [f"| {r['codec']} | {r['rates']} | {r['point']} | {r['bpp']:.4f} | "
              f"{r['psnr']:.2f} | {r['map']:.3f} | {r['noise_map']:.3f} |"
              for r in rows if r["bpp"] is not None]
    lines += ["", f"Uncompressed validation images: {metric} "
              + ", ".join(f"{r['map']:.3f}" for r in rows if r["codec"] == "uncompressed") + "."]
    return "\n".join(lines) + "\n"


def savings_table(rows, baseline, other, metric):
    """The savings against ``baseline`` of every codec but ``other`` (the other baseline)."""
    savings = oracle_savings(rows, baseline=baseline, leave_out=(other,))
    return savings_lines(savings, f"the {baseline}", "every curve here covers", metric) + [""]


def main(argv=None):
    task, args = task_and_args(argv, METRIC, __doc__)
    if task is None:
        return
    if args:
        sys.exit(f"icm_quantizer_study.py takes only --task, not {' '.join(args)}")
    name = "icm_quantizer_study" + ("" if task == "detection" else f"_{task}")
    command = COMMAND + ("" if task == "detection" else f" --task {task}")
    run_study(name, command, 2, lambda: measure(get_preset("cpu"), task),
              lambda rows, meta: markdown(rows, meta, task))


if __name__ == "__main__":
    main()
