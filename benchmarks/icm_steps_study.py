"""Twice the ICM steps? (data/results/cpu/icm_steps.*)

Each ICM codec of the retrain in progress (``icm_steps`` = 6000, staged in
``icmlib/weights/next`` by ``benchmarks/retrain.py``) against the shipped one of the same
recipe at 3000 steps, both measured on the same validation images (recipes are chosen on
validation data; the test split chooses nothing): real bpp from the coded bytes, PSNR, and
the mAP of the frozen task network on the decoded images at every rate point. Codecs not
staged yet are left out; run it again as the retrain goes on.

    ICM_CACHE=.cache/book python benchmarks/icm_steps_study.py
"""
from study import header, run_study

from icmlib.data import dataset_for
from icmlib.evaluation import REPRO_TASKS
from icmlib.presets import get_preset
from icmlib.shipped import SHIPPED_DIR, load_shipped
from icmlib.tasks import FrozenTask, task_network
from icmlib.training import LOW_RATES, codec_at_rate, codec_config
from icmlib.training.validation import validate_codec

IMAGES = 64
STEPS = (3000, 6000)
STAGED = SHIPPED_DIR.parent / "next"
COMMAND = "ICM_CACHE=.cache/book python benchmarks/icm_steps_study.py"


def shipped_or_staged(preset, task, strategy, rate):
    """The codec's checkpoint from the shipped set or the staging folder, or None."""
    config = codec_config(preset, task, strategy, rate)
    for folder in (SHIPPED_DIR, STAGED):
        ckpt = load_shipped("codec", config, verbose=False, directory=folder)
        if ckpt is not None:
            return ckpt
    return None


def measure(preset):
    rows = []
    val = dataset_for(preset, "val", train=False)
    for task in REPRO_TASKS:
        frozen = FrozenTask(task_network(task, preset, progress=False), task)
        for strategy in preset.repro_strategies:
            for rate in ("all", LOW_RATES):
                ckpts = {s: shipped_or_staged(preset.replace(icm_steps=s), task, strategy, rate)
                         for s in STEPS}
                if None in ckpts.values():
                    continue
                n = len(preset.rd_lambdas if rate == "all" else preset.low_rd_lambdas)
                for point in range(n):
                    row = {"task": task, "strategy": strategy, "codec": rate, "point": point}
                    for steps, ckpt in ckpts.items():
                        m = validate_codec(codec_at_rate(ckpt, point), val, IMAGES, frozen, task)
                        row[steps] = {"bpp": m["bpp"], "psnr": m["psnr"], "map": m["task_score"]}
                    rows.append(row)
                    print(row, flush=True)
    return rows


def markdown(rows, meta):
    a, b = STEPS
    lines = header(f"ICM steps: {a} (shipped) against {b} (the retrain), same recipe otherwise", meta,
                   f"{IMAGES} validation images; mAP@[.5:.95] of the frozen task network on the "
                   f"decoded images (box for detection, mask for instance)")
    lines += [f"| codec | rate point | {a}: bpp | mAP | PSNR | {b}: bpp | mAP | PSNR | Δ bpp | Δ mAP |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        x, y = r[a], r[b]
        lines.append(f"| {r['task']} {r['strategy']} {r['codec']} | {r['point']} | "
                     f"{x['bpp']:.3f} | {x['map']:.3f} | {x['psnr']:.2f} | {y['bpp']:.3f} | "
                     f"{y['map']:.3f} | {y['psnr']:.2f} | {100 * (y['bpp'] / x['bpp'] - 1):+.0f} % | "
                     f"{y['map'] - x['map']:+.3f} |")
    return "\n".join(lines) + "\n"


def main():
    run_study("icm_steps", COMMAND, 2, lambda: measure(get_preset("cpu")), markdown)


if __name__ == "__main__":
    main()
