"""The reproduction's numbers, read from its results file: the paper's table and the headline.

From a results dict alone (:mod:`icmlib.evaluation.results`; nothing is evaluated again):
the BD-rate table in the paper's form (:func:`paper_table`: rows (task, codec), columns the
anchors), every pair with its full message for the results file (:func:`bd_details`), the
headline per task (:func:`summarize`, :func:`headline_table`: the best ICM codec against
the strongest traditional anchor and the MSE baseline, the points that beat the
uncompressed originals), the bits each anchor needs at the MSE baseline's quality
(:func:`equal_quality_rates`), where along the curves the ICM codecs save bits against the
MSE baseline (:func:`saving_along_curves`, :func:`saving_by_accuracy`), where the bits go
in the images (:func:`object_share_table`) and the pair
of curves the book draws the Bjøntegaard delta with (:func:`illustration_pair`).
"""
from __future__ import annotations

import warnings
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from icmlib.evaluation.bdrate import (BDRateError, BDRateWarning, bd_rate_halves, overlap,
                                      rate_difference_at)
from icmlib.evaluation.results import REPRO_TASKS, TASK_METRIC, curve, find_codec, mse_name
from icmlib.evaluation.tables import bd_rate_details, bd_rate_table, better_than_reference

#: The paper's BD-rates (Le et al., ICASSP 2021, Table 1: ICM codec vs VVC)
PAPER_BD_RATE = {"detection": -37.87, "instance": -32.90}


def object_share_table(results: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Per learned codec and rate point: bpp, object bit share, and its ratio to the MSE
    baseline's share two ways: at the same rate point (``vs_mse``: the same λ) and at the
    same bpp (``vs_mse_equal_bpp``: the MSE baseline's share interpolated at this point's
    bpp, None outside the baseline's range of rates).

    The two differ because the share depends on the rate (on the cpu world every codec's
    share rises as its rate falls), and an ICM codec at the same λ codes at a lower rate
    than the baseline: only the equal-bpp ratio compares codecs spending the same budget."""
    mse = next((c["points"] for c in results["codecs"] if c.get("group") == "mse"), [])
    by_setting = {p["setting"]: p for p in mse}
    rows = []
    for c in results["codecs"]:
        if c.get("kind") != "learned":
            continue
        for p in c["points"]:
            if "object_bit_share" not in p:
                continue
            base = by_setting.get(p["setting"], {}).get("object_bit_share")
            at_bpp = share_at_bpp(mse, p["bpp"])
            rows.append({"codec": c["name"], "setting": p["setting"], "bpp": p["bpp"],
                         "object_bit_share": p["object_bit_share"],
                         "object_area_share": p["object_area_share"],
                         "vs_mse": p["object_bit_share"] / base if base else None,
                         "vs_mse_equal_bpp": p["object_bit_share"] / at_bpp if at_bpp else None})
    return rows


def share_at_bpp(points: Sequence[Dict[str, Any]], bpp: float) -> Optional[float]:
    """A codec's object bit share at ``bpp``, linear in log bpp between its two nearest
    points; None outside its range of rates (or when its points have no shares)."""
    known = sorted((p["bpp"], p["object_bit_share"]) for p in points
                   if "object_bit_share" in p and p["bpp"] > 0)
    if len(known) < 2 or not known[0][0] <= bpp <= known[-1][0]:
        return None
    rates, shares = zip(*known)
    return float(np.interp(np.log(bpp), np.log(rates), shares))


def paper_table(results: Dict[str, Any], as_text: bool = True, method: str = "pchip",
                rate: str = "bpp"):
    """The BD-rate table in the paper's form: rows = (task, codec) — the ICM codecs and
    the MSE baseline of each task — columns = anchors (traditional codecs and the MSE
    baseline); detection on bbox mAP, instance segmentation on mask (segm) mAP.
    ``rate``: ``"bpp"``, the coded bits (the rule, :mod:`icmlib.evaluation.overheads`), or
    ``"bpp_file"``, whole files."""
    import pandas as pd

    codecs = results["codecs"]
    anchors = [c["name"] for c in codecs if c["kind"] == "anchor"] + \
              [c["name"] for c in codecs if c.get("group") == "mse"]
    frames = []
    for task in results.get("tasks", REPRO_TASKS):
        metric = TASK_METRIC[task]
        tests = [c["name"] for c in codecs if c.get("group") == "mse"] + \
                [c["name"] for c in codecs if c.get("group") == "icm" and c.get("task") == task]
        if not tests:
            continue
        df = bd_rate_table(results, anchors=anchors, metric=metric, tests=tests,
                           method=method, as_text=as_text, rate=rate)
        if as_text:
            df = df.fillna("")
            for t in tests:
                if t in df.columns:
                    df.loc[t, t] = "—"
        df.index = pd.MultiIndex.from_tuples([(task, i) for i in df.index],
                                             names=["task (metric)", "codec"])
        frames.append(df)
    return pd.concat(frames) if frames else pd.DataFrame()


def bd_details(results: Dict[str, Any], method: str = "pchip",
               rate: str = "bpp") -> List[Dict[str, Any]]:
    """Every (test, anchor) pair of :func:`paper_table` with its number or its full error
    message and warnings (dropped non-monotonic points...), for the results file."""
    codecs = results["codecs"]
    anchors = [c["name"] for c in codecs if c["kind"] == "anchor" or c.get("group") == "mse"]
    rows = []
    for task in results.get("tasks", REPRO_TASKS):
        tests = [c["name"] for c in codecs if c.get("group") == "mse" or
                 (c.get("group") == "icm" and c.get("task") == task)]
        for row in bd_rate_details(results, anchors, TASK_METRIC[task], tests, method=method,
                                   rate=rate):
            rows.append({"task": task, **row})
    return rows


def summarize(results: Dict[str, Any]) -> Dict[str, Any]:
    """Headline numbers: per task, the best ICM codec's BD-rate against the best
    traditional anchor and against the MSE baseline, and the points where decoded images
    beat the uncompressed originals."""
    codecs = results["codecs"]
    trad = [c["name"] for c in codecs if c["kind"] == "anchor"]
    mse = [c["name"] for c in codecs if c.get("group") == "mse"]
    out: Dict[str, Any] = {"tasks": {}}
    for task in results.get("tasks", REPRO_TASKS):
        metric = TASK_METRIC[task]
        icm = [c["name"] for c in codecs if c.get("group") == "icm" and c.get("task") == task]
        if not icm:
            continue
        num = bd_rate_table(results, anchors=trad + mse, metric=metric, tests=icm,
                            as_text=False)
        txt = bd_rate_table(results, anchors=trad + mse, metric=metric, tests=icm,
                            as_text=True)
        per = {}
        for t in icm:
            row = num.loc[t]
            trad_vals = {a: float(row[a]) for a in trad if np.isfinite(row[a])}
            # the "best" anchor is the one the ICM codec saves least against
            best_anchor = max(trad_vals, key=trad_vals.get) if trad_vals else None
            per[t] = {
                "vs_best_traditional": (best_anchor, trad_vals.get(best_anchor)) if best_anchor
                else (None, None),
                "vs_mse": {m: (float(row[m]) if np.isfinite(row[m]) else txt.loc[t, m])
                           for m in mse},
                "all": {a: txt.loc[t, a] for a in trad + mse},
            }
        better = better_than_reference({"reference": results["reference"],
                                        "codecs": [c for c in codecs if c["name"] in icm + mse + trad]},
                                       metric)
        out["tasks"][task] = {"metric": metric, "reference": results["reference"].get(metric),
                              "icm": per, "better_than_uncompressed": better}
    # where the learned codecs start: the MSE baseline against each anchor for the eye.
    # ICM's gain over MSE is measured from there, so a baseline behind the anchors on
    # PSNR has that much to make up before it can beat them on task accuracy.
    if trad and mse:
        psnr = bd_rate_table(results, anchors=trad, metric="psnr", tests=mse, as_text=True)
        out["mse_vs_anchors_psnr"] = {a: psnr.loc[mse[0], a] for a in trad}
        out["mse_vs_anchors_equal_psnr"] = equal_quality_rates(results, mse[0], trad, "psnr")
    return out


def saving_along_curves(results: Dict[str, Any], task: str, levels: int = 201
                        ) -> Dict[str, Any]:
    """Per ICM codec of ``task``: the percent of bits it spends beyond (negative: saves
    against) the MSE baseline at equal task accuracy, on ``levels`` accuracies evenly
    spaced over the range both curves cover -- the curve whose log-mean is its BD-rate
    against the baseline (:func:`~icmlib.evaluation.bdrate.rate_difference_at`).
    ``{codec: (accuracies, percents)}``; a codec whose curve does not overlap the
    baseline's is left out."""
    metric = TASK_METRIC[task]
    baseline = list(zip(*curve(find_codec(results, mse_name()), metric)))
    out = {}
    for codec in results["codecs"]:
        if codec.get("group") != "icm" or codec.get("task") != task:
            continue
        points = list(zip(*curve(codec, metric)))
        lo, hi, _ = overlap((min(q for _, q in baseline), max(q for _, q in baseline)),
                            (min(q for _, q in points), max(q for _, q in points)))
        if hi <= lo:
            continue
        accuracies = np.linspace(lo, hi, levels)
        with warnings.catch_warnings():  # dropped points: the BD-rate table's warnings say so
            warnings.simplefilter("ignore", BDRateWarning)
            try:
                percents = rate_difference_at(baseline, points, accuracies, quality_name=metric)
            except BDRateError:
                continue
        kept = [(q, d) for q, d in zip(accuracies, percents) if d is not None]
        out[codec["name"]] = (np.array([q for q, _ in kept]), np.array([d for _, d in kept]))
    return out


def saving_by_accuracy(results: Dict[str, Any]):
    """Where along the curves each ICM codec's saving against the MSE baseline lies: its
    BD-rate over the lower and the upper half of the accuracy range both curves cover, and
    over the whole range (the BD-rate of :func:`paper_table`). A DataFrame, rows (task,
    codec); the BD-rates are log-means of :func:`saving_along_curves`."""
    import pandas as pd

    rows = []
    for task in results.get("tasks", REPRO_TASKS):
        for name, (accuracies, percents) in saving_along_curves(results, task).items():
            lower, upper, whole = bd_rate_halves(percents)
            rows.append({"task": task, "codec": name, "accuracy range": f"{TASK_METRIC[task]} "
                         f"{accuracies[0]:.3f}–{accuracies[-1]:.3f}",
                         "lower half": f"{lower:+.1f} %", "upper half": f"{upper:+.1f} %",
                         "whole range": f"{whole:+.1f} %"})
    frame = pd.DataFrame(rows)
    return frame.set_index(["task", "codec"]) if rows else frame


def equal_quality_rates(results: Dict[str, Any], test: str, anchors: Sequence[str],
                        metric: str = "psnr") -> Dict[str, Any]:
    """At the quality of ``test``'s highest-rate point: the bpp each anchor needs for it.

    A one-point comparison that exists even when a BD-rate cannot (a curve whose quality
    barely changes with rate overlaps nothing): ``{"bpp", "quality", "anchors": {name:
    bpp or a reason}}``. The anchor's rate is interpolated linearly in log(bpp) between its
    two points around that quality (after dropping points below its running maximum)."""
    top = max(find_codec(results, test)["points"], key=lambda p: p["bpp"])
    q = top.get(metric)
    out = {"bpp": top["bpp"], "quality": q, "anchors": {}}
    for name in anchors:
        pts = sorted((p["bpp"], p.get(metric)) for p in find_codec(results, name)["points"]
                     if p.get(metric) is not None)
        frontier = [pts[0]] if pts else []
        for b, v in pts[1:]:
            if v > frontier[-1][1]:
                frontier.append((b, v))
        if q is None or not frontier:
            out["anchors"][name] = "no points"
        elif q < frontier[0][1]:
            out["anchors"][name] = f"below its lowest setting ({frontier[0][0]:.3f} bpp)"
        elif q > frontier[-1][1]:
            out["anchors"][name] = f"above its highest setting ({frontier[-1][0]:.3f} bpp)"
        else:
            qs = [v for _, v in frontier]
            out["anchors"][name] = float(np.exp(np.interp(q, qs, [np.log(b) for b, _ in frontier])))
    return out


def headline_table(results: Dict[str, Any]):
    """Per task: the paper's BD-rate against VVC next to ours — the best ICM codec against
    the strongest traditional anchor available here and against the MSE baseline."""
    import pandas as pd

    s = results["extra"].get("summary") or summarize(results)
    rows = []
    for task, t in s["tasks"].items():
        best = None
        for name, v in t["icm"].items():
            anchor, value = v["vs_best_traditional"]
            if value is not None and (best is None or value < best[2]):
                best = (name, anchor, value, v["vs_mse"])
        if best is None:
            rows.append({"task": task, "paper (vs VVC)": f"{PAPER_BD_RATE.get(task, float('nan')):+.2f} %",
                         "ours: codec": "—", "ours: vs strongest traditional anchor": "n/a",
                         "ours: vs MSE baseline": "n/a"})
            continue
        name, anchor, value, vs_mse = best
        mse = "; ".join(f"{x:+.1f} %" if isinstance(x, float) else str(x) for x in vs_mse.values())
        rows.append({"task": task, "paper (vs VVC)": f"{PAPER_BD_RATE.get(task, float('nan')):+.2f} %",
                     "ours: codec": name,
                     "ours: vs strongest traditional anchor": f"{value:+.1f} % ({anchor})",
                     "ours: vs MSE baseline": mse})
    return pd.DataFrame(rows).set_index("task")


def illustration_pair(results: Dict[str, Any], metric: str = "psnr",
                      test: Optional[str] = None, min_overlap: float = 0.2):
    """A pair of curves to draw the Bjøntegaard delta with: ``test`` (default the MSE
    baseline) and the anchor whose ``metric`` range overlaps it most; when no anchor
    overlaps it by ``min_overlap`` (a tiny, barely trained run), the two anchors that
    overlap each other most.

    Returns ``(anchor_name, anchor_points, test_name, test_points)``, points as
    ``[(bpp, quality), ...]``; the anchor is ``None`` when nothing overlaps at all.
    """
    def points(codec):
        return list(zip(*curve(codec, metric)))

    def frac(a, b):
        qa, qb = [q for _, q in a], [q for _, q in b]
        return overlap((min(qa), max(qa)), (min(qb), max(qb)))[2]

    anchors = [(c["name"], points(c)) for c in results["codecs"] if c["kind"] == "anchor"]
    anchors = [(n, p) for n, p in anchors if len(p) >= 4]
    test = test or mse_name()
    t_pts = points(find_codec(results, test))
    pairs = [(frac(p, t_pts), n, p, test, t_pts) for n, p in anchors if len(t_pts) >= 2]
    best = max(pairs, default=None, key=lambda x: x[0])
    if best is None or best[0] < min_overlap:
        others = [(frac(pa, pb), na, pa, nb, pb) for i, (na, pa) in enumerate(anchors)
                  for nb, pb in anchors[i + 1:]]
        alt = max(others, default=None, key=lambda x: x[0])
        if alt is not None and (best is None or alt[0] > best[0]):
            best = alt
    if best is None or best[0] <= 0:
        return None, [], test, t_pts
    return best[1], best[2], best[3], best[4]
