"""A dense task term: the task network's feature pyramid as part of what an ICM codec keeps
(data/results/cpu/icm_feature_study.*)

The paper's task term is the frozen network's own training loss on the decoded image. It
speaks only where an anchor or a proposal meets an object: a sparse signal, and at low
rates the MSE term (μ = 0.1 of λ) still decides most of what the codec keeps. A common
alternative in coding for machines is a feature distortion: how far the network's features
on x̂ are from those on x. Here it is the feature pyramid the R-CNN's heads read, the
squared error of each level relative to its energy, averaged over levels
(:func:`icmlib.codec.losses.feature_distortion`), added to the task term with a weight φ
(``preset.icm_feature_weight``). φ = 2.5 gives it about the task loss's gradient on x̂:
the study measures ‖∇L_task‖ / ‖∇L_feat‖ on the shipped detection codec's decoded images
(:func:`gradient_ratio`, at its lowest and highest rate points; in the table's header).

This study trains the detection codecs with fixed weighting (rates ``low_rd_lambdas`` and
``rd_lambdas``) with the feature term, from the same MSE codecs and for the same steps as the
shipped ones, and measures them with the shipped ones and the MSE baseline on validation
images (recipes are chosen on validation data; the test split chooses nothing): real bpp,
PSNR and box mAP at every rate point, and each codec's BD-rate against the baseline over
the lower half, the upper half and the whole box mAP range every curve covers
(:func:`icmlib.evaluation.oracle.oracle_savings`).

    ICM_CACHE=.cache/book python benchmarks/icm_feature_study.py [--task instance]
        [--strategy dynamic|auto]

``--task instance`` trains and measures the instance-segmentation codecs instead (mask mAP;
``icm_feature_study_instance.*``), ``--strategy`` those of another weighting strategy
(``icm_feature_study[_instance]_dynamic.*``), each with the variant detection chose with
fixed weighting only.

The codecs train into ``$ICM_CACHE/runs/codec/<key>`` (resumable: run the command again
after an interruption) unless they are there already; on 2 threads about 20 min per variant,
then a few minutes of measuring.
"""
import sys

import torch
from study import header, run_study, savings_lines, task_and_args

from icmlib.codec import losses, run_codec
from icmlib.data import dataset_for
from icmlib.evaluation.oracle import BASELINE, ORIGINAL, oracle_savings
from icmlib.presets import get_preset
from icmlib.tasks import FrozenTask, evaluate_task, task_network
from icmlib.training import baseline_run, codec_at_rate, codec_run, resolve_rate
from icmlib.training.validation import validate_codec

IMAGES = 64
STRATEGIES = ("fixed", "dynamic", "auto")
METRIC = {"detection": ("box mAP", "detector"), "instance": ("mask mAP", "instance network")}
COMMAND = "ICM_CACHE=.cache/book python benchmarks/icm_feature_study.py"
ICM_GROUPS = ("low", "all")
BASELINE_GROUPS = ("mse-low", "low", "mse-mid", "all")
#: (φ, μ) of each variant trained: with detection and fixed weighting the feature term
#: beside the shipped MSE term, and in place of most of it; elsewhere the one that chose
CHOSEN = (2.5, 0.03)
VARIANTS = {("detection", "fixed"): ((2.5, 0.1), CHOSEN)}


def shipped_name(strategy: str) -> str:
    return f"ICM {strategy}, task loss alone (shipped: φ = 0, μ = 0.1)"


def variant_name(strategy: str, phi: float, mu: float) -> str:
    return f"ICM {strategy}, task loss + feature term (φ = {phi:g}, μ = {mu:g})"


def codecs(preset, task, strategy):
    """(name, [(rate group, checkpoint)]) of every codec compared; the new ones are trained
    here (resumably) if not cached."""
    yield BASELINE, [(g, baseline_run(preset, g, progress=False)) for g in BASELINE_GROUPS]
    yield shipped_name(strategy), [(g, codec_run(preset, task, strategy, g, progress=False))
                                   for g in ICM_GROUPS]
    for phi, mu in VARIANTS.get((task, strategy), (CHOSEN,)):
        variant = preset.replace(icm_feature_weight=phi, icm_mse_weight=mu, train_threads=2)
        yield variant_name(strategy, phi, mu), [
            (g, codec_run(variant, task, strategy, g, progress=True)) for g in ICM_GROUPS]


def gradient_ratio(preset, batches: int = 4):
    """``{rate point: ‖∇L_task‖ / ‖∇L_feat‖}`` on x̂ of the shipped detection codec (fixed
    weighting) at its lowest and highest point, over ``batches`` training batches: the φ at
    which the feature term pulls on the decoded image as hard as the task loss does."""
    train = dataset_for(preset.replace(crop_size=preset.icm_crop_size), "train", train=True,
                        seed=preset.train_seed)
    frozen = FrozenTask(task_network("detection", preset, progress=False), "detection")
    ckpt = codec_run(preset, "detection", "fixed", "all", progress=False)
    size = preset.icm_batch_size
    out = {}
    for point in (0, len(preset.rd_lambdas) - 1):
        net = codec_at_rate(ckpt, point).eval()
        task_norm = feature_norm = 0.0
        for b in range(batches):
            items = [train[b * size + i] for i in range(size)]
            x = torch.stack([image for image, _ in items])
            with torch.no_grad():
                x_hat = run_codec(net, x)["x_hat"]
            x_hat.requires_grad_(True)
            task = losses.task_loss(frozen, x_hat, [t for _, t in items])["task"]
            task_norm += float(torch.autograd.grad(task, x_hat)[0].norm())
            feature = losses.feature_distortion(frozen, x_hat, x)
            feature_norm += float(torch.autograd.grad(feature, x_hat)[0].norm())
        out[point] = task_norm / feature_norm
    return out


def measure(preset, task, strategy):
    val = dataset_for(preset, "val", train=False)
    frozen = FrozenTask(task_network(task, preset, progress=False), task)
    images = [val[i][0] for i in range(IMAGES)]
    score = evaluate_task(frozen, task, val, images=images, max_images=IMAGES)["score"]
    rows = [{"codec": "uncompressed", "input": ORIGINAL, "bpp": None, "psnr": None,
             "map": float(score)}]
    for name, groups in codecs(preset, task, strategy):
        for group, ckpt in groups:
            for point in range(len(resolve_rate(preset, group)[1])):
                m = validate_codec(codec_at_rate(ckpt, point), val, IMAGES, frozen, task,
                                   images=images)
                rows.append({"codec": name, "input": ORIGINAL, "rates": group, "point": point,
                             "bpp": m["bpp"], "psnr": m["psnr"], "map": m["task_score"]})
                print(rows[-1], flush=True)
    return rows


def calibration_lines(meta) -> list:
    """The bullet that says where φ's scale comes from, when the study measured it."""
    ratio = meta.get("gradient_ratio")
    if not ratio:
        return []
    points = ", ".join(f"{float(v):.2f} at rate point {k}" for k, v in ratio.items())
    return [f"‖∇L_task‖ / ‖∇L_feat‖ on x̂ of the shipped detection codec (fixed), 4 training "
            f"batches: {points} (φ of about this size pulls on x̂ as hard as the task loss)"]


def markdown(rows, meta, task="detection", strategy="fixed"):
    metric, network = METRIC[task]
    lines = header(f"A feature term in the ICM codec's task term ({task}, {strategy} weighting; "
                   "validation images)", meta,
                   f"{IMAGES} validation images; {metric}@[.5:.95] of the frozen {network} on "
                   "the decoded images", "new codecs: the shipped recipe plus φ · feature_distortion "
                   "in the task term (icm_feature_weight = φ, icm_mse_weight = μ), rates "
                   "low_rd_lambdas and rd_lambdas, from the same MSE codecs for the same steps",
                   *calibration_lines(meta))
    lines += savings_lines(oracle_savings(rows), "the MSE baseline", "every curve here covers",
                           metric)
    lines += ["", "Every point:", "", f"| codec | rates | point | bpp | PSNR | {metric} |",
              "|---|---|---|---|---|---|"]
    lines += [f"| {r['codec']} | {r['rates']} | {r['point']} | {r['bpp']:.4f} | "
              f"{r['psnr']:.2f} | {r['map']:.3f} |" for r in rows if r["bpp"] is not None]
    lines += ["", f"Uncompressed validation images: {metric} "
              + ", ".join(f"{r['map']:.3f}" for r in rows if r["codec"] == "uncompressed") + "."]
    return "\n".join(lines) + "\n"


def main(argv=None):
    task, args = task_and_args(argv, METRIC, __doc__)
    if task is None:
        return
    strategy = "fixed"
    if args[:1] == ["--strategy"] and len(args) == 2 and args[1] in STRATEGIES:
        strategy, args = args[1], []
    if args:
        sys.exit(f"icm_feature_study.py takes only --task and --strategy "
                 f"({', '.join(STRATEGIES)}), not {' '.join(args)}")
    name = "icm_feature_study" + "".join(f"_{v}" for v, default in ((task, "detection"),
                                                                   (strategy, "fixed"))
                                         if v != default)
    command = COMMAND + "".join(f" --{k} {v}" for k, v, default in (
        ("task", task, "detection"), ("strategy", strategy, "fixed")) if v != default)
    preset = get_preset("cpu")
    calibrate = (lambda: {"gradient_ratio": gradient_ratio(preset)}) if (
        task, strategy) == ("detection", "fixed") else None
    run_study(name, command, 2, lambda: measure(preset, task, strategy),
              lambda rows, meta: markdown(rows, meta, task, strategy), calibrate)


if __name__ == "__main__":
    main()
