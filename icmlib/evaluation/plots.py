"""Figures used across the book. Each section belongs to one area (evaluation, training, ...);
functions take data or results files and return matplotlib axes."""
from __future__ import annotations


# ======================================================================================
# Evaluation figures (icmlib.evaluation.evaluate / icmlib.evaluation.reproduction): drawn straight from a results
# file (icmlib.evaluation.results), so plotting never re-runs an evaluation.
# ======================================================================================
#: how each group of codecs is drawn: traditional anchors thin and dashed, the MSE
#: baseline solid blue, ICM codecs thick (fixed: orange, dynamic: red, auto: purple)
RD_STYLES = {
    "traditional": dict(linestyle="--", linewidth=1.2, marker="o", markersize=3, alpha=0.8),
    "mse": dict(color="tab:blue", linestyle="-", linewidth=1.8, marker="s", markersize=4),
    "icm-fixed": dict(color="tab:orange", linestyle="-", linewidth=2.2, marker="^", markersize=5),
    "icm-dynamic": dict(color="tab:red", linestyle="-", linewidth=2.4, marker="D", markersize=5),
    "icm-auto": dict(color="tab:purple", linestyle="-", linewidth=2.2, marker="v", markersize=5),
}


def _rd_style(codec):
    group = codec.get("group", "traditional")
    if group == "icm":
        style = dict(RD_STYLES.get(f"icm-{codec.get('strategy')}", RD_STYLES["icm-dynamic"]))
        if codec.get("task") == "instance":  # tell the two tasks' codecs apart on one plot
            style.update(linestyle="-.", markerfacecolor="white")
        return style
    return dict(RD_STYLES.get(group, RD_STYLES["traditional"]))


def plot_rd_curves(results, metric="bbox_map", ax=None, codecs=None, task=None,
                   reference=True, title=None, legend=True, log_rate=True):
    """Rate-accuracy (or rate-distortion) curves of every codec in a results file.

    Args:
        results: a results dict or the path of a results JSON (``icmlib.evaluation.results``).
        metric: the y axis: ``"bbox_map"``, ``"segm_map"``, ``"bbox_map50"``,
            ``"psnr"``, ``"ms_ssim"``, ``"miou"``...
        codecs: names to draw (default: every codec that has ``metric``; ICM codecs
            trained for another task than ``task`` are left out when ``task`` is given).
        reference: draw the task network's accuracy on the **uncompressed** images as a
            horizontal line (task metrics only).
        log_rate: bpp on a log axis (the axis the Bjøntegaard delta integrates over; it
            also keeps the low rates, where the codecs differ most, readable).

    Returns the matplotlib axes.
    """
    import matplotlib.pyplot as plt

    from icmlib.evaluation.results import curve, load_results, metric_label

    results = load_results(results)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.4))
    for codec in results["codecs"]:
        if codecs is not None and codec["name"] not in codecs:
            continue
        if codecs is None and task is not None and codec.get("task") not in (None, task):
            continue
        x, y = curve(codec, metric)
        if not x:
            continue
        ax.plot(x, y, label=codec["name"], **_rd_style(codec))
    ref = results.get("reference", {}).get(metric)
    if reference and ref is not None:
        ax.axhline(ref, color="black", linestyle=":", linewidth=1.2,
                   label=f"uncompressed ({ref:.3f})")
    if log_rate:
        ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (real bytes" + (", log scale)" if log_rate else ")"))
    ax.set_ylabel(metric_label(metric))
    ds = results.get("dataset", {})
    ax.set_title(title or f"{metric_label(metric)} against rate — "
                          f"{ds.get('name', '')} {ds.get('split', '')}, "
                          f"{ds.get('num_images', '?')} images", fontsize=10)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="lower right")
    return ax


def plot_object_shares(results, ax=None, legend=True):
    """Where the bits go, against rate: each learned codec's share of main-stream bits
    inside the objects (``object_bit_share`` of its points) over bpp, and the objects'
    share of the image as a dotted line -- what a codec blind to content would spend --
    and, dashed, what a codec spending only on objects would (``extra`` of the results,
    :func:`icmlib.evaluation.bitmaps.object_share_if_bits_followed_objects`).
    Codecs are compared at equal bpp, reading vertically: a codec's share depends on its
    rate (:func:`icmlib.evaluation.summary.object_share_table`)."""
    import matplotlib.pyplot as plt

    from icmlib.evaluation.bitmaps import FOLLOWED_OBJECTS
    from icmlib.evaluation.results import load_results

    results = load_results(results)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.4))
    areas = []
    for codec in results["codecs"]:
        points = sorted((p["bpp"], p["object_bit_share"], p["object_area_share"])
                        for p in codec["points"] if "object_bit_share" in p)
        if not points:
            continue
        x, y, area = zip(*points)
        areas += area
        ax.plot(x, y, label=codec["name"], **_rd_style(codec))
    if areas:
        ax.axhline(float(sum(areas) / len(areas)), color="black", linestyle=":", linewidth=1.2,
                   label="objects' share of the image")
    followed = results.get("extra", {}).get(FOLLOWED_OBJECTS)
    if areas and followed is not None:
        ax.axhline(float(followed), color="black", linestyle="--", linewidth=1.0,
                   label="bits only where objects are")
    ax.set_xscale("log")
    ax.set_xlabel("bits per pixel (real bytes, log scale)")
    ax.set_ylabel("share of bits inside objects")
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.0%}"))
    ax.set_title("Where the bits go: share inside objects against rate", fontsize=10)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=7, loc="upper right")
    return ax


def plot_saving_along_curves(results, task="detection", ax=None, legend=True):
    """Each ICM codec of ``task`` against the MSE baseline, at equal task accuracy: the
    percent of bits it spends beyond (below zero: saves against) the baseline, along the
    accuracy range both cover (:func:`icmlib.evaluation.summary.saving_along_curves`).
    The BD-rate is the log-mean of each line; this shows where along the curves it lies."""
    import matplotlib.pyplot as plt

    from icmlib.evaluation.results import TASK_METRIC, load_results, metric_label
    from icmlib.evaluation.summary import saving_along_curves

    results = load_results(results)
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.4))
    codecs = {c["name"]: c for c in results["codecs"]}
    for name, (accuracies, percents) in saving_along_curves(results, task).items():
        ax.plot(accuracies, percents, label=name, markevery=max(1, len(accuracies) // 8),
                **_rd_style(codecs[name]))
    ax.axhline(0.0, color="black", linewidth=1.0)
    ax.set_xlabel(f"{metric_label(TASK_METRIC[task])} (equal for both codecs)")
    ax.set_ylabel("bits against the MSE baseline")
    ax.yaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:+.0f} %"))
    ax.set_title(f"{task}: where along the curves ICM saves bits", fontsize=10)
    ax.grid(True, alpha=0.3)
    if legend:
        ax.legend(fontsize=7)
    return ax


def plot_bd_illustration(anchor, test, method="pchip", ax=None, anchor_name="anchor",
                         test_name="test", quality_label="quality"):
    """The Bjøntegaard delta drawn: both curves as log10(rate) against quality, the
    interpolants (``method`` "pchip" or "cubic") over the common quality range, and the
    area between them whose mean width is the BD-rate (in log10 rate).

    ``anchor``, ``test``: ``[(rate, quality), ...]``. Returns ``(ax, bd_rate_percent)``.
    """
    import matplotlib.pyplot as plt
    import numpy as np
    from scipy.interpolate import PchipInterpolator

    from icmlib.evaluation.bdrate import bd_rate, frontier

    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 4.4))
    value = bd_rate(anchor, test, method=method)
    curves = []
    for pts, name, color in ((anchor, anchor_name, "tab:blue"), (test, test_name, "tab:red")):
        pts = frontier(pts) if method == "pchip" else sorted(pts)
        r = np.log10([p[0] for p in pts])
        q = np.array([p[1] for p in pts])
        if method == "pchip":
            f = PchipInterpolator(q, r)
        else:
            coeffs = np.polyfit(q, r, 3)
            f = lambda qq, c=coeffs: np.polyval(c, qq)  # noqa: E731
        ax.plot(q, r, "o", color=color, label=f"{name} (measured)")
        curves.append((q, f, color, name))
    lo = max(c[0].min() for c in curves)
    hi = min(c[0].max() for c in curves)
    qq = np.linspace(lo, hi, 200)
    for q, f, color, name in curves:
        full = np.linspace(q.min(), q.max(), 200)
        ax.plot(full, f(full), "-", color=color, alpha=0.5)
        ax.plot(qq, f(qq), "-", color=color, linewidth=2.2, label=f"{name} ({method} fit)")
    ax.fill_between(qq, curves[0][1](qq), curves[1][1](qq), color="tab:green", alpha=0.25,
                    label="area between the fits")
    for v in (lo, hi):
        ax.axvline(v, color="grey", linestyle=":", linewidth=1)
    ax.set_xlabel(quality_label)
    ax.set_ylabel("log10(bits per pixel)")
    ax.set_title(f"BD-rate of {test_name} vs {anchor_name}: {value:+.1f} % ({method})",
                 fontsize=10)
    ax.legend(fontsize=7)
    ax.grid(True, alpha=0.3)
    return ax, value


def plot_weighting_comparison(results, task="detection", rate_index=None, axes=None):
    """The loss-weighting comparison of a reproduction: for each strategy (fixed,
    dynamic, ...) at one rate point, the task accuracy and the rate on validation images
    over training, the task weight over training, and the final RD points of each
    strategy's codecs.

    Reads ``results["extra"]["training"]`` (written by ``icmlib.evaluation.reproduction``). Returns
    the axes (4 panels).
    """
    import matplotlib.pyplot as plt
    import numpy as np

    from icmlib.evaluation.results import TASK_METRIC, curve, load_results, metric_label

    results = load_results(results)
    runs = [r for r in results.get("extra", {}).get("training", [])
            if r.get("task") == task]
    if not runs:
        raise ValueError(f"the results hold no training logs for task {task!r} "
                         f"(they come from 'icm reproduce')")
    if rate_index is None:  # the middle rate point
        idx = sorted({r["rate_index"] for r in runs})
        rate_index = idx[len(idx) // 2]
    if axes is None:
        _, axes = plt.subplots(1, 4, figsize=(17, 3.8))
    metric = TASK_METRIC[task]
    colors = {"fixed": "tab:orange", "dynamic": "tab:red", "auto": "tab:purple"}
    for run in runs:
        if run["rate_index"] != rate_index:
            continue
        c = colors.get(run["strategy"], None)
        val = run.get("val", [])
        steps = [v["step"] for v in val]
        score = [v.get("task_score", np.nan) for v in val]
        axes[0].plot(steps, score, "o-", color=c, label=run["strategy"])
        axes[1].plot(steps, [v.get("bpp", np.nan) for v in val], "o-", color=c,
                     label=run["strategy"])
        train = run.get("train", [])
        axes[2].plot([t["step"] for t in train], [t.get("w_task", np.nan) for t in train],
                     "-", color=c, label=f"{run['strategy']}: w_task")
        axes[2].plot([t["step"] for t in train], [t.get("w_mse", np.nan) for t in train],
                     "--", color=c, alpha=0.6, label=f"{run['strategy']}: w_mse")
    ref = results.get("reference", {}).get(metric)
    if ref is not None:
        axes[0].axhline(ref, color="black", linestyle=":", label="uncompressed")
    axes[0].set_title(f"{task}: accuracy during training (rate point {rate_index})", fontsize=9)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel(metric_label(metric))
    axes[1].set_title("rate during training (real bytes, val)", fontsize=9)
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("bpp")
    axes[2].set_title("loss weights w_task (solid), w_mse (dashed)", fontsize=9)
    axes[2].set_xlabel("step")
    axes[2].set_yscale("symlog", linthresh=1e-4)
    for codec in results["codecs"]:
        if codec.get("group") == "icm" and codec.get("task") != task:
            continue
        if codec.get("group") not in ("icm", "mse"):
            continue
        x, y = curve(codec, metric)
        if x:
            axes[3].plot(x, y, label=codec["name"], **_rd_style(codec))
    if ref is not None:
        axes[3].axhline(ref, color="black", linestyle=":")
    axes[3].set_title("final RD points per strategy", fontsize=9)
    axes[3].set_xlabel("bpp")
    axes[3].set_ylabel(metric_label(metric))
    for ax in axes:
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    return axes


# ======================================================================================
# Training figures (icmlib.training): drawn from the CSV logs every training run writes.
# ======================================================================================
#: colours of the loss-weighting strategies in training figures (same as RD_STYLES)
STRATEGY_COLORS = {"mse": "tab:blue", "fixed": "tab:orange", "dynamic": "tab:red",
                   "auto": "tab:purple"}


def _smooth(values, window):
    """Running mean over ``window`` steps (the first points average what exists)."""
    import numpy as np

    v = np.asarray(values, dtype=float)
    if window <= 1 or len(v) == 0:
        return v
    c = np.cumsum(np.insert(v, 0, 0.0))
    out = np.empty_like(v)
    for i in range(len(v)):
        lo = max(0, i + 1 - window)
        out[i] = (c[i + 1] - c[lo]) / (i + 1 - lo)
    return out


def _as_logs(run):
    """``{"train": rows, "val": rows}`` from a checkpoint dict, a logs dict, a run folder
    or a codec loaded by ``codec_for`` (``net.logs``)."""
    from pathlib import Path

    if isinstance(run, (str, Path)):
        from icmlib.training import TRAIN_LOG, VAL_LOG, read_log

        return {"train": read_log(Path(run) / TRAIN_LOG), "val": read_log(Path(run) / VAL_LOG)}
    if hasattr(run, "logs"):
        return run.logs
    if isinstance(run, dict) and "logs" in run:
        return run["logs"]
    if isinstance(run, dict) and "train" in run:
        return run
    raise ValueError("expected a training run: a checkpoint dict with 'logs', a logs dict "
                     "{'train': [...], 'val': [...]}, a run folder, or a codec from codec_for")


def plot_training_logs(runs, smooth=None, axes=None, title=None):
    """Weights, loss terms and validation metrics over training, one line per run.

    Args:
        runs: ``{label: run}`` where a run is a checkpoint dict from ``train_codec`` /
            ``codec_run`` (with ``logs``), its ``logs`` dict, a run folder holding
            ``train_log.csv`` and ``val_log.csv``, or a codec from ``codec_for``. Labels
            naming a strategy (``"fixed"``, ``"dynamic"``, ``"auto"``, ``"mse"``) get its
            colour.
        smooth: running-mean window for the per-step training curves (default: 1/20 of
            the run, at least 1).

    Panels (2 × 3): the loss weights w_mse and w_task (w_rate = 1 throughout, by
    convention); the weighted total loss; the task loss on the training batches; and
    from the validation log, bpp (real bytes), PSNR and the task score (COCO mAP /
    mIoU). Returns the axes array.
    """
    import matplotlib.pyplot as plt
    import numpy as np

    if axes is None:
        _, axes = plt.subplots(2, 3, figsize=(15, 7.5))
    axes = np.asarray(axes).reshape(-1)
    for i, (label, run) in enumerate(runs.items()):
        logs = _as_logs(run)
        color = STRATEGY_COLORS.get(str(label).split()[0], f"C{i}")
        train, val = logs.get("train", []), logs.get("val", [])
        if train:
            steps = np.array([r["step"] for r in train])
            k = smooth or max(1, len(train) // 20)
            axes[0].plot(steps, [r["w_task"] for r in train], "-", color=color,
                         label=f"{label}: w_task")
            axes[0].plot(steps, [r["w_mse"] for r in train], "--", color=color,
                         label=f"{label}: w_mse")
            axes[1].plot(steps, _smooth([r["loss"] for r in train], k), color=color, label=label)
            if any(r.get("task", 0) for r in train):
                axes[2].plot(steps, _smooth([r["task"] for r in train], k), color=color,
                             label=label)
        if val:
            vsteps = [r["step"] for r in val]
            axes[3].plot(vsteps, [r["bpp"] for r in val], "o-", color=color, label=label)
            axes[4].plot(vsteps, [r["psnr"] for r in val], "o-", color=color, label=label)
            if any("task_score" in r for r in val):
                axes[5].plot(vsteps, [r.get("task_score", np.nan) for r in val], "o-",
                             color=color, label=label)
    titles = ["loss weights (w_rate = 1)", "total loss L (running mean)",
              "task loss L_task on training batches", "validation: bpp (real bytes)",
              "validation: PSNR (dB)", "validation: task score (mAP / mIoU)"]
    for ax, t in zip(axes, titles):
        ax.set_title(t, fontsize=10)
        ax.set_xlabel("step")
        ax.grid(True, alpha=0.3)
        if ax.get_lines():
            ax.legend(fontsize=7)
    axes[0].set_yscale("symlog", linthresh=1e-4)
    if title:
        axes[0].figure.suptitle(title)
    axes[0].figure.tight_layout()
    return axes
