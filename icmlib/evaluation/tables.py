"""Tables from a results file: the BD-rate table, what each codec's files carry, the points
that beat the uncompressed originals.

Everything here reads a results dict (:mod:`icmlib.evaluation.results`), never runs an
evaluation, so a table can be made again from a committed ``results.json`` alone. The
Bjøntegaard arithmetic is :mod:`icmlib.evaluation.bdrate`'s; this module picks the curves
(``bpp`` or ``bpp_file`` against a task metric) and lays the numbers out.
"""
from __future__ import annotations

from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from icmlib.evaluation.accuracy import EvaluationError
from icmlib.evaluation.bdrate import bd_rate_pairs
from icmlib.evaluation.overheads import measure
from icmlib.evaluation.results import curve


def better_than_reference(results: Mapping[str, Any], metric: str) -> List[Dict[str, Any]]:
    """Every codec point whose task accuracy beats the uncompressed reference on ``metric``
    (the paper observed this at some rates): ``[{codec, setting, bpp, value, reference}]``."""
    ref = results["reference"].get(metric)
    if ref is None:
        return []
    out = []
    for codec in results["codecs"]:
        for p in codec["points"]:
            v = p.get(metric)
            if v is not None and v > ref:
                out.append({"codec": codec["name"], "setting": p["setting"], "bpp": p["bpp"],
                            "value": v, "reference": ref, "gain": v - ref})
    return out


def bd_rate_table(results: Mapping[str, Any], anchors: Optional[Sequence[str]] = None,
                  metric: str = "bbox_map", tests: Optional[Sequence[str]] = None,
                  method: str = "pchip", min_overlap: float = 0.2, as_text: bool = True,
                  rate: str = "bpp"):
    """The paper's BD-rate table from a results file: each test codec against each anchor.

    Args:
        results: a results dict (:func:`icmlib.evaluation.results.load_results`).
        anchors: codec names used as anchors (columns). Default: every ``kind ==
            "anchor"`` codec plus the MSE baseline(s) (``group == "mse"``).
        metric: the quality axis (``"bbox_map"`` for detection, ``"segm_map"`` for
            instance segmentation, ``"psnr"``...).
        tests: codec names in the rows (default: the learned codecs not among anchors).
        method: ``"pchip"`` (JVET CTC, default; non-monotonic mAP curves use their
            running-maximum frontier, see :mod:`icmlib.evaluation.bdrate`) or ``"cubic"``.
        as_text: cells are strings — ``"-41.2 %"`` or ``"n/a (reason)"`` — ready to print;
            with ``False`` they are floats (NaN where not computable).
        rate: ``"bpp"`` (coded bits, the same rule for every codec: :mod:`icmlib.evaluation.overheads`)
            or ``"bpp_file"`` (whole files; an older results file's ``bpp`` serves for
            both, :func:`icmlib.evaluation.results.point_rate`).

    Returns a pandas DataFrame, rows = test codecs, columns = anchors. Negative = the
    test codec needs fewer bits than the anchor for the same accuracy.
    """
    import pandas as pd

    codecs = {c["name"]: c for c in results["codecs"]}
    if anchors is None:
        anchors = [n for n, c in codecs.items() if c.get("kind") == "anchor"
                   or c.get("group") == "mse"]
    if tests is None:
        tests = [n for n, c in codecs.items() if n not in anchors and c.get("kind") == "learned"]
    unknown = [n for n in list(anchors) + list(tests) if n not in codecs]
    if unknown:
        raise EvaluationError(f"codec(s) {unknown} not in the results; have {list(codecs)}")
    usable, table = _bd_rates(results, anchors, tests, metric, rate, method, min_overlap)
    cells: Dict[str, Dict[str, Any]] = {t: {} for t in tests}
    for t in tests:
        for a in anchors:
            if t == a:
                continue
            if t not in usable or a not in usable:
                cells[t][a] = "n/a (too few points)" if as_text else float("nan")
                continue
            r = table[(t, a)]
            if r["bd_rate"] is None:
                reason = _short_reason(r["error"])
                cells[t][a] = f"n/a ({reason})" if as_text else float("nan")
            else:
                cells[t][a] = f"{r['bd_rate']:+.1f} %" if as_text else float(r["bd_rate"])
    df = pd.DataFrame.from_dict(cells, orient="index", columns=list(anchors))
    df.index.name = f"BD-rate on {metric}" + (" (whole files)" if rate == "bpp_file" else "")
    return df


def overhead_table(results: Mapping[str, Any]):
    """Per codec: the mean bytes per image of each part of its files (:mod:`icmlib.evaluation.overheads`;
    mean over its points), and at its lowest rate point the bpp the rule counts, the whole
    file's bpp and the share of the file the rule leaves out. Codecs whose points carry no
    ``overhead_bytes`` (a results file written before the split) are left out."""
    import pandas as pd

    rows = {}
    for c in results["codecs"]:
        pts = [p for p in c["points"] if p.get("overhead_bytes") and p.get("bpp_file")]
        if not pts:
            continue
        low = min(pts, key=lambda p: p["bpp"])
        row = {f"{k} [B]": float(np.mean([p["overhead_bytes"].get(k, np.nan) for p in pts]))
               for k in ("headers", "container", "metadata", "size_prefix")}
        row.update({"lowest point: bpp": low["bpp"], "bpp_file": low["bpp_file"],
                    "not counted": 1 - low["bpp"] / low["bpp_file"]})
        rows[c["name"]] = row
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.index.name = "codec"
    return df


def overhead_comparison(codecs: Sequence[Any], sizes: Sequence[Tuple[int, int]] = ((128, 128),
                                                                             (640, 480)),
                        seed: int = 0):
    """What each codec's file carries beside the coded bits, at two image sizes.

    For every codec at its lowest setting (``qualities[0]``), on a synthetic-world image of
    each ``(width, height)`` (the ``cpu`` preset's 128×128 and a COCO-sized 640×480): the
    bytes the BD-rate rule leaves out (container + metadata + size prefix,
    :mod:`icmlib.evaluation.overheads`), what they are in bpp and as a share of the file, and the
    per-image headers the rule counts. Fixed bytes weigh 18.75 times more per pixel on the
    small image. Returns a DataFrame, rows = codecs, columns = (size, quantity)."""
    import pandas as pd

    from icmlib.data.world import _render_image

    images = {}
    for w, h in sizes:
        pixels, _ = _render_image(np.random.default_rng(seed), max(w, h), 3)
        images[f"{w}×{h}"] = pixels[:h, :w]
    rows: Dict[str, Dict[Tuple[str, str], Any]] = {}
    for codec in codecs:
        for label, image in images.items():
            m = measure(codec, image, codec.qualities[0])
            rows.setdefault(codec.name, {}).update({
                (label, "not counted [B]"): m["not_counted"],
                (label, "not counted [bpp]"): round(m["bpp_not_counted"], 4),
                (label, "share of file"): f"{m['share_not_counted']:.1%}",
                (label, "headers [B]"): m.get("headers", "")})
    df = pd.DataFrame.from_dict(rows, orient="index")
    df.columns = pd.MultiIndex.from_tuples(df.columns)
    df.index.name = "codec (lowest setting)"
    return df


def _short_reason(error: str) -> str:
    if "overlap" in error:
        return "too little overlap"
    if "point" in error:
        return "too few points"
    return error.split(";")[0][:60]


def bd_rate_details(results: Mapping[str, Any], anchors: Sequence[str], metric: str,
                    tests: Sequence[str], method: str = "pchip",
                    min_overlap: float = 0.2, rate: str = "bpp") -> List[Dict[str, Any]]:
    """The BD-rate table as rows with the full error / warning messages (for the JSON),
    on ``rate`` (``"bpp"``: coded bits; ``"bpp_file"``: whole files)."""
    _, table = _bd_rates(results, anchors, tests, metric, rate, method, min_overlap)
    return [{"test": t, "anchor": a, "metric": metric, "method": method, "rate": rate, **v}
            for (t, a), v in table.items()]


def _bd_rates(results: Mapping[str, Any], anchors: Sequence[str], tests: Sequence[str],
              metric: str, rate: str, method: str, min_overlap: float):
    """``(names of the codecs with two points or more, bd_rate_pairs over them)``: the
    (test, anchor) pairs of those codecs, each with its number or its error."""
    codecs = {c["name"]: c for c in results["codecs"]}
    curves = {n: list(zip(*curve(codecs[n], metric, rate))) for n in list(anchors) + list(tests)
              if n in codecs}
    usable = {n: p for n, p in curves.items() if len(p) >= 2}
    return set(usable), bd_rate_pairs(usable, anchors=[a for a in anchors if a in usable],
                                      tests=[t for t in tests if t in usable], method=method,
                                      min_overlap=min_overlap, quality_name=metric)


def dataframe_to_markdown(df) -> str:
    """A pandas DataFrame as a GitHub markdown table (no extra dependency)."""
    cols = [df.index.name or ""] + [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for idx, row in df.iterrows():
        cells = [str(idx)] + [("" if (isinstance(v, float) and np.isnan(v)) else
                               (f"{v:.2f}" if isinstance(v, float) else str(v))) for v in row]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
