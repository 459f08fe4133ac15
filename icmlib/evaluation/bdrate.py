"""Bjøntegaard delta: the average gap between two rate-quality curves.

Two codecs are rarely measured at the same rates, so "how much better is B than A?" needs
interpolation. Bjøntegaard (VCEG-M33, 2001) answers it in two ways:

* **BD-rate** — at equal quality, how many percent more (or fewer) bits does the test codec
  spend than the anchor, averaged over the quality range both curves cover? Log-rate is
  interpolated as a function of quality for each curve, both are integrated over the common
  quality interval ``[q_lo, q_hi]``, and the mean log-rate gap ``Δ`` is turned back into a
  ratio::

      Δ = (∫ log10 R_test(q) dq − ∫ log10 R_anchor(q) dq) / (q_hi − q_lo)
      BD-rate = (10**Δ − 1) · 100 %          (negative = the test codec saves bits)

* **BD-quality** (BD-PSNR when quality is PSNR, BD-mAP when it is mAP) — at equal rate, how
  much higher is the test codec's quality, averaged over the common log-rate interval? The
  same recipe with the axes swapped; the answer is in the quality's own unit (dB, mAP points).

Averaging log-rate rather than rate makes the result a geometric mean of rate ratios, so a
curve twice as expensive everywhere gives +100 % whichever rates it was measured at.

Two interpolations are offered (``method=``):

``"cubic"`` — VCEG-M33's original: one least-squares cubic polynomial per curve (exactly
    through the points when there are four). At least 4 points. A single polynomial can
    overshoot between points; that is why the JCT-VC moved to...
``"pchip"`` — piecewise cubic Hermite interpolation (Fritsch–Carlson slopes, SciPy's
    ``PchipInterpolator``), as in the JCT-VC / JVET common-test-conditions Excel sheets
    (JCTVC-L1100, JVET-T2010). It passes through every point and never overshoots, so it
    needs the interpolated axis to be strictly increasing — see the next section. At least
    2 points (4 or more is the convention).

Non-monotonic curves (policy)
-----------------------------
PSNR always rises with rate; task accuracy (mAP, mIoU) often does not — the detector may
score a slightly blurrier image higher. The policy here:

1. Points are sorted by rate; non-finite values or rates ≤ 0 are an error.
2. ``"pchip"`` interpolates on the curve's **running-maximum frontier**: a point is kept only
   if its quality is strictly higher than that of every point with a lower (or equal) rate.
   The frontier is "the best quality this codec achieves at or below this rate": a user who
   wants quality q would never pick a setting that costs more and gives less. It keeps every
   point that is not dominated (unlike an upper convex hull, which would also drop points
   that lie below the chord of their neighbours, i.e. assume time-sharing between settings
   that a single image cannot do). Dropped points are reported with a ``BDRateWarning``.
3. ``"cubic"`` fits its polynomial to *all* points — a least-squares fit tolerates a dip —
   but still warns, because a polynomial through a non-monotonic curve can make the
   integral meaningless.

Too little overlap
------------------
The integration interval is the overlap of the two curves' ranges on the interpolated axis.
The overlap fraction is ``overlap / union`` of the two ranges. If it is zero, or below
``min_overlap`` (default ``0.2``), ``BDRateError`` is raised with both ranges in the message —
a number computed from a sliver of overlap, or from extrapolation, is not worth reporting.
Pass ``min_overlap=0`` to accept any positive overlap.

Checked against published test vectors (``tests/test_bdrate.py``): the VCEG-M33 example data
and the ETRO barb512 curves (cubic), and JCTVC-E137 data (PCHIP), to at least 4 decimals.
"""
from __future__ import annotations

import math
import warnings
from typing import Dict, Iterable, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from scipy.interpolate import PchipInterpolator

__all__ = [
    "BDRateError", "BDRateWarning", "METHODS", "bd_rate", "bd_quality", "bd_psnr", "bd_map",
    "frontier", "overlap", "bd_rate_pairs", "rate_difference_at", "bd_rate_halves",
]

#: Interpolation methods and their accepted spellings.
METHODS = {"cubic": "cubic", "vceg-m33": "cubic", "polyfit": "cubic",
           "pchip": "pchip", "jvet": "pchip", "piecewise-cubic": "pchip"}

#: Minimal number of points per curve for each method.
MIN_POINTS = {"cubic": 4, "pchip": 2}

Point = Tuple[float, float]


class BDRateError(ValueError):
    """A Bjøntegaard delta cannot be computed meaningfully (too few points, no overlap...)."""


class BDRateWarning(UserWarning):
    """Something about a curve (non-monotonic, points dropped) that the reader should know."""


# --------------------------------------------------------------------------------------
# Preparing a curve
# --------------------------------------------------------------------------------------

def _as_points(points, role: str) -> np.ndarray:
    """Validate ``[(rate, quality), ...]`` and return an N×2 float array sorted by rate."""
    try:
        arr = np.asarray([(float(r), float(q)) for r, q in points], dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise BDRateError(f"{role} curve must be a list of (rate, quality) pairs: {err}") from None
    if arr.size == 0:
        raise BDRateError(f"{role} curve is empty")
    arr = arr.reshape(-1, 2)
    if not np.all(np.isfinite(arr)):
        raise BDRateError(f"{role} curve has non-finite values: {arr.tolist()}")
    if np.any(arr[:, 0] <= 0):
        raise BDRateError(f"{role} curve has a rate <= 0 (log-rate undefined): {arr[:, 0].tolist()}")
    order = np.lexsort((arr[:, 1], arr[:, 0]))  # by rate, then quality
    return arr[order]


def _is_monotonic(arr: np.ndarray) -> bool:
    return bool(np.all(np.diff(arr[:, 0]) > 0) and np.all(np.diff(arr[:, 1]) > 0))


def frontier(points: Iterable[Point]) -> List[Point]:
    """The running-maximum frontier of a rate-quality curve, sorted by rate.

    Keeps a point only if its quality is strictly higher than that of every point with a
    lower or equal rate: "the best quality achievable at or below this rate". The result is
    strictly increasing in both rate and quality, as PCHIP needs.
    """
    arr = _as_points(points, "input")
    kept: List[Point] = []
    best = -math.inf
    i = 0
    while i < len(arr):
        # among equal rates keep the best quality (sorted ascending, so the last one)
        j = i
        while j + 1 < len(arr) and arr[j + 1, 0] == arr[i, 0]:
            j += 1
        r, q = arr[j]
        if q > best:
            kept.append((float(r), float(q)))
            best = q
        i = j + 1
    return kept


def _prepare(points, role: str, method: str, quality_name: str) -> np.ndarray:
    arr = _as_points(points, role)
    need = MIN_POINTS[method]
    if method == "pchip":
        if not _is_monotonic(arr):
            kept = np.asarray(frontier(arr), dtype=np.float64)
            dropped = [tuple(p) for p in arr.tolist() if tuple(p) not in set(map(tuple, kept.tolist()))]
            warnings.warn(
                f"{role} curve is not monotonic ({quality_name} does not rise with rate); PCHIP "
                f"uses its running-maximum frontier and drops the dominated points "
                f"{[(round(r, 6), round(q, 6)) for r, q in dropped]}", BDRateWarning, stacklevel=3)
            arr = kept
        if len(arr) < need:
            raise BDRateError(
                f"{role} curve has {len(arr)} usable point(s) after removing dominated ones; "
                f"PCHIP needs at least {need}. Measure more rate points.")
    else:
        if len(arr) < need:
            raise BDRateError(
                f"{role} curve has {len(arr)} point(s); the cubic (VCEG-M33) fit needs at least "
                f"{need}. Measure more rate points or use method='pchip'.")
        if len(np.unique(arr[:, 1])) < need or len(np.unique(arr[:, 0])) < need:
            raise BDRateError(
                f"{role} curve has fewer than {need} distinct rates or qualities; a cubic fit "
                f"is undetermined: {arr.tolist()}")
        if not _is_monotonic(arr):
            warnings.warn(
                f"{role} curve is not monotonic ({quality_name} does not rise with rate); the "
                f"cubic fit uses all points, but the result may be misleading — consider "
                f"method='pchip', which uses the curve's frontier.", BDRateWarning, stacklevel=3)
    return arr


# --------------------------------------------------------------------------------------
# The integral
# --------------------------------------------------------------------------------------

def overlap(a: Tuple[float, float], b: Tuple[float, float]) -> Tuple[float, float, float]:
    """``(lo, hi, fraction)``: the common interval of ranges ``a`` and ``b`` and its share of
    their union (0 when they do not overlap)."""
    lo, hi = max(a[0], b[0]), min(a[1], b[1])
    union = max(a[1], b[1]) - min(a[0], b[0])
    frac = max(hi - lo, 0.0) / union if union > 0 else 0.0
    return lo, hi, frac


def _mean_gap(x_a, y_a, x_b, y_b, method: str, min_overlap: float, axis: str) -> float:
    """Mean of ``y_b(x) − y_a(x)`` over the common x range, each curve interpolated."""
    ra, rb = (float(x_a.min()), float(x_a.max())), (float(x_b.min()), float(x_b.max()))
    lo, hi, frac = overlap(ra, rb)
    if hi <= lo or frac < min_overlap:
        raise BDRateError(
            f"the curves' {axis} ranges overlap too little for a Bjøntegaard delta: anchor "
            f"[{ra[0]:.6g}, {ra[1]:.6g}], test [{rb[0]:.6g}, {rb[1]:.6g}], overlap "
            f"{100 * frac:.1f} % of their union (minimum {100 * min_overlap:.0f} %). Measure the "
            f"codecs over a common range, or lower min_overlap if you accept the risk.")
    ints = [_interpolant(x, y, method)[1](lo, hi) for x, y in ((x_a, y_a), (x_b, y_b))]
    return float((ints[1] - ints[0]) / (hi - lo))


def _interpolant(x, y, method: str):
    """``y(x)`` as the Bjøntegaard delta interpolates it: ``(value_at, integral(lo, hi))``.
    ``"cubic"``: one least-squares cubic polynomial; ``"pchip"``: through every point."""
    if method == "cubic":
        polynomial = np.poly1d(np.polyfit(x, y, 3))
        primitive = polynomial.integ()
        return polynomial, lambda lo, hi: float(primitive(hi) - primitive(lo))
    pchip = PchipInterpolator(x, y)
    return pchip, lambda lo, hi: float(pchip.integrate(lo, hi))


def _method(method: str) -> str:
    try:
        return METHODS[method.lower()]
    except (KeyError, AttributeError):
        raise BDRateError(f"unknown method {method!r}; choose one of {sorted(set(METHODS))}") from None


def bd_rate(anchor: Iterable[Point], test: Iterable[Point], method: str = "pchip",
            min_overlap: float = 0.2, quality_name: str = "quality") -> float:
    """BD-rate of ``test`` against ``anchor``, in percent (negative: the test saves bits).

    Args:
        anchor, test: ``[(rate, quality), ...]``; rate in any positive unit (bpp, kbit/s),
            the same for both; quality in any unit where higher is better (PSNR, mAP).
        method: ``"pchip"`` (JVET/JCT-VC CTC, default) or ``"cubic"`` (VCEG-M33).
        min_overlap: smallest accepted share of the common quality interval in the union of
            the two quality ranges; below it ``BDRateError`` is raised.
        quality_name: used in messages only.

    See the module docstring for the treatment of non-monotonic curves.
    """
    method = _method(method)
    a = _prepare(anchor, "anchor", method, quality_name)
    b = _prepare(test, "test", method, quality_name)
    gap = _mean_gap(a[:, 1], np.log10(a[:, 0]), b[:, 1], np.log10(b[:, 0]), method,
                    min_overlap, quality_name)
    return (10.0 ** gap - 1.0) * 100.0


def rate_difference_at(anchor: Iterable[Point], test: Iterable[Point], qualities: Iterable[float],
                       method: str = "pchip", quality_name: str = "quality") -> List[Optional[float]]:
    """At each quality in ``qualities``: how many percent more (or fewer) bits ``test`` spends
    than ``anchor``, or ``None`` outside the quality range both curves cover.

    The integrand of :func:`bd_rate`, point by point: the same curves (frontiers for PCHIP),
    the same interpolation of log-rate against quality. BD-rate is its log-mean over the
    common range, so this says *where* along the curves a BD-rate's saving lies.
    """
    method = _method(method)
    a = _prepare(anchor, "anchor", method, quality_name)
    b = _prepare(test, "test", method, quality_name)
    lo, hi, _ = overlap((a[:, 1].min(), a[:, 1].max()), (b[:, 1].min(), b[:, 1].max()))
    curves = [_interpolant(arr[:, 1], np.log10(arr[:, 0]), method)[0] for arr in (a, b)]
    return [None if not lo <= q <= hi else
            float((10.0 ** (curves[1](q) - curves[0](q)) - 1.0) * 100.0) for q in qualities]


def bd_rate_halves(percents: Sequence[float]) -> Tuple[float, float, float]:
    """BD-rate (percent) over the lower half, the upper half and the whole of a
    :func:`rate_difference_at` curve taken at evenly spaced qualities over the common range.

    Each is the trapezoid mean of log(1 + percent/100) over its part, BD-rate's integral,
    so the whole equals :func:`bd_rate` up to the sampling; at least 3 samples."""
    logs = np.log1p(np.asarray(percents, dtype=float) / 100.0)
    if logs.ndim != 1 or len(logs) < 3 or not np.isfinite(logs).all():
        raise ValueError("bd_rate_halves needs at least 3 finite percents (rate_difference_at "
                         "inside the common range)")
    half = len(logs) // 2
    mean = lambda part: float(np.expm1(((part[1:] + part[:-1]) / 2).mean()) * 100.0)
    return mean(logs[:half + 1]), mean(logs[half:]), mean(logs)


def bd_quality(anchor: Iterable[Point], test: Iterable[Point], method: str = "pchip",
               min_overlap: float = 0.2, quality_name: str = "quality") -> float:
    """BD-quality of ``test`` against ``anchor``: the mean quality gain at equal rate, in the
    quality's own unit (dB for PSNR, mAP points for mAP). Positive: the test is better.

    Quality is interpolated as a function of log10(rate) and averaged over the common
    log-rate interval. Arguments as in ``bd_rate``.
    """
    method = _method(method)
    a = _prepare(anchor, "anchor", method, quality_name)
    b = _prepare(test, "test", method, quality_name)
    return _mean_gap(np.log10(a[:, 0]), a[:, 1], np.log10(b[:, 0]), b[:, 1], method,
                     min_overlap, "log10-rate")


def bd_psnr(anchor, test, method: str = "pchip", min_overlap: float = 0.2) -> float:
    """BD-PSNR in dB: ``bd_quality`` with PSNR as the quality."""
    return bd_quality(anchor, test, method, min_overlap, quality_name="PSNR")


def bd_map(anchor, test, method: str = "pchip", min_overlap: float = 0.2) -> float:
    """BD-mAP: ``bd_quality`` with mAP as the quality (same unit as the mAP given)."""
    return bd_quality(anchor, test, method, min_overlap, quality_name="mAP")


def bd_rate_pairs(curves: Mapping[str, Iterable[Point]], anchors: Sequence[str],
                  tests: Optional[Sequence[str]] = None, method: str = "pchip",
                  min_overlap: float = 0.2, quality_name: str = "quality"
                  ) -> Dict[Tuple[str, str], Dict[str, object]]:
    """BD-rate of every test curve against every anchor curve, pair by pair (laid out as
    the paper's table by :func:`icmlib.evaluation.tables.bd_rate_table`).

    Returns ``{(test, anchor): {"bd_rate": float or None, "error": str or None,
    "warnings": [str]}}``; a pair that cannot be compared (too little overlap...) carries the
    error message instead of a number, so one bad pair does not sink the table.
    """
    tests = list(tests) if tests is not None else [n for n in curves if n not in anchors]
    table: Dict[Tuple[str, str], Dict[str, object]] = {}
    for t in tests:
        for a in anchors:
            if t == a:
                continue
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always", BDRateWarning)
                try:
                    value, error = bd_rate(curves[a], curves[t], method, min_overlap,
                                           quality_name), None
                except BDRateError as err:
                    value, error = None, str(err)
            table[(t, a)] = {"bd_rate": value, "error": error,
                             "warnings": [str(w.message) for w in caught]}
    return table
