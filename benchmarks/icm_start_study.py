"""Where should an ICM codec start? (data/results/cpu/icm_start_study.*)

Every ICM codec of the ``cpu`` recipe is fine-tuned from the MSE codec of its rates, which
trained on 64-pixel crops; the MSE baseline the reproduction reports has one more stage on
whole images (``preset.mse_finish_steps``, ``icmlib.training.baseline_run``), and codes
whole images at far fewer bits. This study trains the detection codec with the paper's
dynamic weighting (rates ``rd_lambdas``, ``icm_steps``) once more, from that finished
baseline, and measures both codecs on validation images (recipes are chosen on
validation data; the test split chooses nothing): real bpp, PSNR and box mAP at each rate
point, and the validation log of each run over training.

    ICM_CACHE=.cache/book python benchmarks/icm_start_study.py

The new codec trains into ``$ICM_CACHE/runs/study/icm-from-finished-baseline`` (resumable;
about 15 min on 2 threads) unless it is there already.
"""
from study import header, run_study

from icmlib.cache import cache_dir
from icmlib.data import dataset_for
from icmlib.presets import get_preset
from icmlib.tasks import FrozenTask, task_network
from icmlib.training import baseline_run, codec_at_rate, codec_run, train_codec
from icmlib.training.validation import validate_codec

IMAGES = 64
COMMAND = "ICM_CACHE=.cache/book python benchmarks/icm_start_study.py"
TASK, STRATEGY = "detection", "dynamic"


def from_finished_baseline(preset):
    """The ICM codec trained from the finished MSE baseline (trained here if not cached)."""
    start = baseline_run(preset, "all", progress=False)
    init = {k: start[k] for k in ("format", "config", "state_dict", "meta")}
    return train_codec(preset.replace(train_threads=2), TASK, STRATEGY, "all",
                       steps=preset.icm_steps, init_from=init, resume=True, progress=False,
                       out_dir=cache_dir("runs", "study", "icm-from-finished-baseline"))


def measure(preset):
    val = dataset_for(preset, "val", train=False)
    frozen = FrozenTask(task_network(TASK, preset, progress=False), TASK)
    runs = {"from the crop-trained MSE codec (shipped)": codec_run(preset, TASK, STRATEGY, "all",
                                                                   progress=False),
            "from the MSE baseline finished on whole images": from_finished_baseline(preset)}
    rows = []
    for label, ckpt in runs.items():
        for rate in range(len(preset.rd_lambdas)):
            m = validate_codec(codec_at_rate(ckpt, rate), val, IMAGES, frozen, TASK)
            curve = [(int(r["step"]), round(r["bpp"], 4), round(r["task_bbox_map"], 3))
                     for r in ckpt["logs"]["val"] if int(r["rate_index"]) == rate]
            rows.append({"start": label, "rate": rate, "bpp": m["bpp"], "psnr": m["psnr"],
                         "bbox_map": m["task_bbox_map"], "val_log": curve})
            print({k: v for k, v in rows[-1].items() if k != "val_log"}, flush=True)
    return rows


def markdown(rows, meta):
    lines = header("Where an ICM codec starts (detection, dynamic; validation images)", meta,
                   f"{IMAGES} validation images; box mAP of the frozen detector on the decoded images")
    lines += ["| start | rate point | bpp | PSNR | box mAP |", "|---|---|---|---|---|"]
    lines += [f"| {r['start']} | {r['rate']} | {r['bpp']:.4f} | {r['psnr']:.2f} | "
              f"{r['bbox_map']:.3f} |" for r in rows]
    lines += ["", "Validation log over training (16 images; step: bpp / box mAP):", "",
              "| start | rate point | log |", "|---|---|---|"]
    lines += [f"| {r['start']} | {r['rate']} | "
              + ", ".join(f"{s}: {b:.3f} / {a:.2f}" for s, b, a in r["val_log"]) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main():
    run_study("icm_start_study", COMMAND, 2, lambda: measure(get_preset("cpu")), markdown)


if __name__ == "__main__":
    main()
