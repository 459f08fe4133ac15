"""A stronger task term? (data/results/cpu/task_weight_study.*)

At low rates the ICM codecs and the MSE baseline nearly meet (README, the reproduction).
An ICM codec's loss weighs the task term by ``icm_task_weight`` · λ (τ = 100 in the cpu
recipe). This study trains the detection codec with fixed weighting (the strategy where τ
scales the task term directly) once more with τ three times larger, from the same MSE codec
and for the same steps, and measures both on the same validation images (recipes are
chosen on validation data; the test split chooses nothing): real bpp, PSNR and box mAP at
every rate point, and the BD-rate of the new codec against the shipped one.

    ICM_CACHE=.cache/book python benchmarks/task_weight_study.py

The new codec trains into ``$ICM_CACHE/runs/study/task-weight-<τ>`` (resumable; about 25
min on 2 threads) unless it is there already. It starts from the shipped MSE codec by hand:
through the recipe, a changed ``icm_task_weight`` would change the MSE codecs' keys too
(their configuration carries the ICM settings) and retrain them from scratch.
"""
from study import header, run_study

from icmlib.data import dataset_for
from icmlib.evaluation.bdrate import BDRateError, bd_rate
from icmlib.presets import get_preset
from icmlib.tasks import FrozenTask, task_network
from icmlib.cache import cache_dir
from icmlib.training import codec_at_rate, codec_run, train_codec
from icmlib.training.validation import validate_codec

IMAGES = 64
TASK, STRATEGY = "detection", "fixed"
WEIGHTS = (100.0, 300.0)  # icm_task_weight: the shipped codec's, and three times it
COMMAND = "ICM_CACHE=.cache/book python benchmarks/task_weight_study.py"


def codec_with(preset, tau):
    """The shipped ICM codec (τ as shipped), or one trained here with τ from the same MSE codec."""
    if tau == preset.icm_task_weight:
        return codec_run(preset, TASK, STRATEGY, "all", progress=False)
    start = codec_run(preset, None, "mse", "all", progress=False)  # the shipped ICM codecs' parent
    init = {k: start[k] for k in ("format", "config", "state_dict", "meta")}
    return train_codec(preset.replace(icm_task_weight=tau, train_threads=2), TASK, STRATEGY, "all",
                       steps=preset.icm_steps, init_from=init, resume=True, progress=False,
                       out_dir=cache_dir("runs", "study", f"task-weight-{tau:g}"))


def measure(preset):
    val = dataset_for(preset, "val", train=False)
    frozen = FrozenTask(task_network(TASK, preset, progress=False), TASK)
    rows = []
    for tau in WEIGHTS:
        ckpt = codec_with(preset, tau)
        for point in range(len(preset.rd_lambdas)):
            m = validate_codec(codec_at_rate(ckpt, point), val, IMAGES, frozen, TASK)
            rows.append({"tau": tau, "point": point, "bpp": m["bpp"], "psnr": m["psnr"],
                         "map": m["task_score"]})
            print(rows[-1], flush=True)
    return rows


def markdown(rows, meta):
    lines = header(f"Task weight τ (icm_task_weight): {WEIGHTS[0]:g} (shipped) against "
                   f"{WEIGHTS[1]:g}, detection, fixed weighting", meta,
                   f"{IMAGES} validation images; box mAP@[.5:.95] of the frozen detector on "
                   f"the decoded images")
    lines += ["| τ | rate point | bpp | PSNR | box mAP |", "|---|---|---|---|---|"]
    lines += [f"| {r['tau']:g} | {r['point']} | {r['bpp']:.3f} | {r['psnr']:.2f} | {r['map']:.3f} |"
              for r in rows]
    curves = [[(r["bpp"], r["map"]) for r in rows if r["tau"] == tau] for tau in WEIGHTS]
    try:
        verdict = f"{bd_rate(*curves):+.1f} %"
    except BDRateError as e:
        verdict = f"n/a ({e})"
    lines += ["", f"BD-rate of τ = {WEIGHTS[1]:g} against τ = {WEIGHTS[0]:g} at equal box mAP "
              f"(negative: fewer bits): {verdict}"]
    return "\n".join(lines) + "\n"


def main():
    run_study("task_weight_study", COMMAND, 2, lambda: measure(get_preset("cpu")), markdown)


if __name__ == "__main__":
    main()
