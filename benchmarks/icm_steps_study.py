"""Twice the ICM steps? (data/results/cpu/icm_steps.*)

ICM codecs trained for ``icm_steps`` = 6000 (``icmlib/weights/study-icm-steps-6000``, staged
there by ``benchmarks/retrain.py --replace icm_steps=6000 --into …``) against the shipped
ones of the same recipe at 3000 steps, both measured on the same validation images
(recipes are chosen on validation data; the test split chooses nothing): real bpp from the
coded bytes, PSNR, and the mAP of the frozen task network on the decoded images at every
rate point, and the BD-rate of 6000 steps against 3000 on those points, per codec and,
where both codecs of a (task, strategy) are there, over its whole curve (``rd_lambdas``' and
``low_rd_lambdas``' points together). Codecs with no 6000-step version there are left out.

    ICM_CACHE=.cache/book python benchmarks/icm_steps_study.py
"""
from study import header, run_study

from icmlib.data import dataset_for
from icmlib.evaluation import REPRO_TASKS
from icmlib.evaluation.bdrate import BDRateError, bd_rate
from icmlib.presets import get_preset
from icmlib.shipped import SHIPPED_DIR, load_shipped
from icmlib.tasks import FrozenTask, task_network
from icmlib.training import LOW_RATES, codec_at_rate, codec_config
from icmlib.training.validation import validate_codec

IMAGES = 64
STEPS = (3000, 6000)
STAGED = SHIPPED_DIR.parent / "study-icm-steps-6000"
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


def bd_rates(rows):
    """``{codec: BD-rate of 6000 steps against 3000}`` on the validation points (%), and
    for a (task, strategy) with both its codecs there, over their points together (its
    whole curve, as the reproduction draws it)."""
    a, b = STEPS
    out = {}
    codec = lambda r: f"{r['task']} {r['strategy']} {r['codec']}"
    curve = lambda r: f"{r['task']} {r['strategy']} (all and low together)"
    names = list(dict.fromkeys(map(codec, rows)))
    names += [n for n in dict.fromkeys(map(curve, rows))
              if len({r["codec"] for r in rows if curve(r) == n}) > 1]
    for name in names:
        mine = [r for r in rows if name in (codec(r), curve(r))]
        try:
            out[name] = bd_rate([(r[a]["bpp"], r[a]["map"]) for r in mine],
                                [(r[b]["bpp"], r[b]["map"]) for r in mine])
        except BDRateError as e:
            out[name] = f"n/a ({e})"
    return out


def markdown(rows, meta):
    a, b = STEPS
    rows = [{**r, a: r.get(a, r.get(str(a))), b: r.get(b, r.get(str(b)))} for r in rows]  # json keys
    lines = header(f"ICM steps: {a} (shipped) against {b}, same recipe otherwise", meta,
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
    lines += ["", f"BD-rate of {b} steps against {a} at equal mAP on these points (negative: "
              f"{b} steps need fewer bits):", ""]
    lines += [f"- {name}: " + (f"{v:+.1f} %" if isinstance(v, float) else v)
              for name, v in bd_rates(rows).items()]
    return "\n".join(lines) + "\n"


def main():
    run_study("icm_steps", COMMAND, 2, lambda: measure(get_preset("cpu")), markdown)


if __name__ == "__main__":
    main()
