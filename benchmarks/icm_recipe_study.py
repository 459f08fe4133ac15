"""Which ICM loss recipe spends fewer bits? (data/results/cpu/icm_recipe_study.*)

At low rates the ICM codecs and the MSE baseline nearly meet (README, the reproduction).
An ICM codec's loss is R + λ·(μ·MSE + τ·task) (``icm_mse_weight`` μ = 0.1 and
``icm_task_weight`` τ = 100 in the cpu recipe). This study trains the detection codec with
fixed weighting (the strategy where τ and μ scale the terms directly) once per variant,
each from the same shipped MSE codec and for the same steps as the shipped ICM codec, and
measures all of them on the same validation images (recipes are chosen on validation data;
the test split chooses nothing): real bpp, PSNR and box mAP at every rate point, and the
BD-rate of each variant against the shipped codec.

    ICM_CACHE=.cache/book python benchmarks/icm_recipe_study.py [--task instance] [FIELD=VALUE ...]

``--task instance`` trains and measures the instance-segmentation codec instead (mask mAP;
``icm_recipe_study_instance.*``).

Each FIELD=VALUE is one variant (default: the variants below). A variant's codec is the
recipe's own (``codec_run`` with the changed preset): it trains into
``$ICM_CACHE/runs/codec/<key>`` (resumable; about 21 min on 2 threads) unless it is there
already, from the shipped MSE codec, the shipped ICM codec's parent (an ICM setting is not
in an MSE codec's key). The committed table's codecs were trained into
``runs/study/<field>-<value>`` by an earlier version of this script, from the same parent
for the same steps.
"""

from study import header, run_study, task_and_args

from icmlib.data import dataset_for
from icmlib.evaluation.bdrate import BDRateError, bd_rate
from icmlib.presets import get_preset
from icmlib.ship import preset_override
from icmlib.tasks import FrozenTask, task_network
from icmlib.training import codec_at_rate, codec_run
from icmlib.training.validation import validate_codec

IMAGES = 64
STRATEGY = "fixed"
METRIC = {"detection": "box mAP", "instance": "mask mAP"}
# τ three times larger and smaller than shipped; μ about three times smaller and larger
# (μ = 0 is measured already: with no pixel term the decoded images leave the detector's
# world, 5.9 dB and box mAP 0.19; data/results/cpu/object_share_study.md)
VARIANTS = ("icm_task_weight=300", "icm_task_weight=30", "icm_mse_weight=0.03",
            "icm_mse_weight=0.3")
COMMAND = "ICM_CACHE=.cache/book python benchmarks/icm_recipe_study.py"
SHIPPED = "shipped"


def codec_with(preset, task, field, value):
    """The ICM codec of the recipe with ``field = value``: trained (or found) by the recipe
    itself, from the shipped MSE codec, since an ICM setting is not in an MSE codec's key."""
    return codec_run(preset.replace(**{field: value}, train_threads=2), task, STRATEGY, "all",
                     progress=False)


def measure(preset, task, variants):
    val = dataset_for(preset, "val", train=False)
    frozen = FrozenTask(task_network(task, preset, progress=False), task)
    codecs = {SHIPPED: lambda: codec_run(preset, task, STRATEGY, "all", progress=False)}
    for text in variants:
        field, value = preset_override(text)
        if isinstance(getattr(preset, field, None), float):
            value = float(value)  # τ = 300 and 300.0 are one recipe, with one key
        preset.replace(**{field: value})  # an unknown field is refused before any training
        codecs[f"{field}={value:g}"] = lambda f=field, v=value: codec_with(preset, task, f, v)
    rows = []
    for variant, load in codecs.items():
        ckpt = load()
        for point in range(len(preset.rd_lambdas)):
            m = validate_codec(codec_at_rate(ckpt, point), val, IMAGES, frozen, task)
            rows.append({"variant": variant, "point": point, "bpp": m["bpp"],
                         "psnr": m["psnr"], "map": m["task_score"]})
            print(rows[-1], flush=True)
    return rows


def bd_rate_against_shipped(rows, variant):
    curve = lambda name: [(r["bpp"], r["map"]) for r in rows if r["variant"] == name]
    try:
        return f"{bd_rate(curve(SHIPPED), curve(variant)):+.1f} %"
    except BDRateError as e:
        return f"n/a ({e})"


def markdown(task, rows, meta):
    preset, metric = get_preset("cpu"), METRIC[task]
    lines = header(f"ICM loss recipe variants, {task}, fixed weighting (shipped: "
                   f"τ = {preset.icm_task_weight:g}, μ = {preset.icm_mse_weight:g})", meta,
                   f"{IMAGES} validation images; {metric}@[.5:.95] of the frozen {task} "
                   f"network on the decoded images; every codec {preset.icm_steps} steps "
                   f"from the same MSE codec")
    lines += [f"| variant | rate point | bpp | PSNR | {metric} |", "|---|---|---|---|---|"]
    lines += [f"| {r['variant']} | {r['point']} | {r['bpp']:.3f} | {r['psnr']:.2f} | "
              f"{r['map']:.3f} |" for r in rows]
    variants = [v for v in dict.fromkeys(r["variant"] for r in rows) if v != SHIPPED]
    lines += ["", f"BD-rate against the shipped codec at equal {metric} (negative: fewer bits):",
              ""]
    lines += [f"- {v}: {bd_rate_against_shipped(rows, v)}" for v in variants]
    return "\n".join(lines) + "\n"


def main(argv=None):
    task, args = task_and_args(argv, METRIC, __doc__)
    if task is None:
        return
    variants = args or VARIANTS
    words = ([] if task == "detection" else ["--task", task]) + list(args)
    name = "icm_recipe_study" + ("" if task == "detection" else f"_{task}")
    run_study(name, " ".join([COMMAND, *words]), 2,
              lambda: measure(get_preset("cpu"), task, variants),
              lambda rows, meta: markdown(task, rows, meta))


if __name__ == "__main__":
    main()
