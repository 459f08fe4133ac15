"""Bjøntegaard delta against published test vectors, and its error handling."""
import math
import warnings

import pytest

from icmlib.evaluation.bdrate import (BDRateError, BDRateWarning, bd_map, bd_psnr, bd_quality,
                                      bd_rate, bd_rate_halves, bd_rate_pairs, frontier, overlap,
                                      rate_difference_at)

# --------------------------------------------------------------------------------------
# Test vectors
# --------------------------------------------------------------------------------------

# VCEG-M33 example data (Bjøntegaard 2001), as (kbit/s, PSNR dB) for curves A (anchor) and
# B (test), with the values of the ETRO Excel add-in (VBA) — source: github.com/tbr/bjontegaard_cpp,
# example.cpp ("VCEG-M33 numbers"; asserts BD-SNR 0.800713 dB and BD-BR -13.261773 %, rounded
# to 6 decimals), a port of the VBA in github.com/tbr/bjontegaard_etro. Cubic fit.
M33_A = [(90.33, 27.95), (181.03, 31.17), (332.99, 34.44), (547.79, 38.11)]
M33_B = [(127.1719, 29.9286), (186.14, 32.4165), (307.2924, 34.7013), (481.5588, 37.4561)]
M33_BDRATE, M33_BDPSNR = -13.261773, 0.800713

# ETRO "barb512" curves: 9 points each, so the cubic is a least-squares fit, not an
# interpolation — same source (tbr/bjontegaard_cpp example.cpp; BD-SNR 0.072297 dB,
# BD-BR -0.903450 %).
BARB_A = [(2.99899, 48.6681), (1.99884, 43.8357), (1.49673, 41.3982), (0.99707, 38.0124),
          (0.745941, 35.5122), (0.596436, 33.8673), (0.495148, 32.6658), (0.29425, 29.4505),
          (0.244049, 28.484)]
BARB_B = [(2.997253, 48.5637), (1.968292, 43.7318), (1.472565, 41.2727), (0.994965, 38.0001),
          (0.748871, 35.6375), (0.58902, 33.9057), (0.499176, 32.8318), (0.296753, 29.6851),
          (0.249634, 28.8244)]
BARB_BDRATE, BARB_BDPSNR = -0.903450, 0.072297

# JCTVC-E137 data (HM anchor vs test, (kbit/s, Y-PSNR)) with the PCHIP BD-rate of the
# JCT-VC method — source: github.com/Netflix/vmaf, python/test/bd_rate_calculator_test.py,
# class BDrateCalculatorJCTVCTest (values given there as fractions: -0.00465215420752807 and
# -0.018779823450567612; the Android CTS bdrate tests reuse them).
E137_1_A = [(108048.8736, 43.6471), (61279.976, 40.3953), (33905.6656, 37.247), (18883.6928, 34.2911)]
E137_1_B = [(108061.2784, 43.6768), (61299.9936, 40.4232), (33928.7472, 37.2761), (18910.912, 34.3147)]
E137_1_BDRATE = -0.465215420752807
E137_2_A = [(40433.8848, 37.5761), (7622.7456, 35.3756), (2394.488, 33.8977), (1017.6184, 32.0603)]
E137_2_B = [(40370.12, 37.5982), (7587.0024, 35.4025), (2390.0944, 33.9194), (1017.0984, 32.0822)]
E137_2_BDRATE = -1.8779823450567612


def test_vceg_m33_cubic():
    assert bd_rate(M33_A, M33_B, method="cubic") == pytest.approx(M33_BDRATE, abs=5e-6)
    assert bd_psnr(M33_A, M33_B, method="cubic") == pytest.approx(M33_BDPSNR, abs=5e-6)


def test_etro_barb512_cubic_least_squares():
    assert bd_rate(BARB_A, BARB_B, method="cubic") == pytest.approx(BARB_BDRATE, abs=5e-6)
    assert bd_psnr(BARB_A, BARB_B, method="cubic") == pytest.approx(BARB_BDPSNR, abs=5e-6)


@pytest.mark.parametrize("a,b,expected", [(E137_1_A, E137_1_B, E137_1_BDRATE),
                                          (E137_2_A, E137_2_B, E137_2_BDRATE)])
def test_jctvc_e137_pchip(a, b, expected):
    assert bd_rate(a, b, method="pchip") == pytest.approx(expected, abs=1e-6)
    assert bd_rate(a, b, method="jvet") == pytest.approx(expected, abs=1e-6)  # alias


# Example data of the FAU-LMS `bjontegaard` package (README / example_usage.py, "Test 1" and
# "Test 3"): cross-checked against the package itself when it is installed (test-only).
FAU_RATE_A = [9487.76, 4593.60, 2486.44, 1358.24]
FAU_PSNR_A = [40.037, 38.615, 36.845, 34.851]
FAU_RATE_B = [9787.80, 4469.00, 2451.52, 1356.24]
FAU_PSNR_B = [40.121, 38.651, 36.970, 34.987]
FAU3 = ([82472.76, 26875.24, 9487.76, 4593.6, 3600, 2900], [43.825, 41.404, 40.037, 38.615, 36.5, 35.1],
        [99896.96, 33952.04, 9787.8, 4469.0, 4040, 3300], [44.731, 41.875, 40.121, 38.651, 37, 36.5])


@pytest.mark.parametrize("case", ["test1", "test3"])
@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_matches_bjontegaard_package(case, method):
    bd = pytest.importorskip("bjontegaard", reason="pip install bjontegaard to cross-check")
    ra, qa, rb, qb = (FAU_RATE_A, FAU_PSNR_A, FAU_RATE_B, FAU_PSNR_B) if case == "test1" else FAU3
    a, b = list(zip(ra, qa)), list(zip(rb, qb))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ref_rate = bd.bd_rate(ra, qa, rb, qb, method=method, min_overlap=0)
        ref_psnr = bd.bd_psnr(ra, qa, rb, qb, method=method, min_overlap=0)
    assert bd_rate(a, b, method=method, min_overlap=0) == pytest.approx(ref_rate, abs=1e-8)
    assert bd_psnr(a, b, method=method, min_overlap=0) == pytest.approx(ref_psnr, abs=1e-8)


# --------------------------------------------------------------------------------------
# Properties
# --------------------------------------------------------------------------------------

CURVE = [(0.1, 30.0), (0.2, 32.5), (0.4, 35.0), (0.8, 37.0), (1.6, 39.0)]


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_identical_curves_give_zero(method):
    assert bd_rate(CURVE, CURVE, method=method) == pytest.approx(0.0, abs=1e-10)
    assert bd_psnr(CURVE, CURVE, method=method) == pytest.approx(0.0, abs=1e-10)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_scaled_rate_gives_exact_percentage(method):
    # Test spends 20 % fewer bits at every quality: BD-rate is exactly -20 %, whatever the fit.
    test = [(0.8 * r, q) for r, q in CURVE]
    assert bd_rate(CURVE, test, method=method) == pytest.approx(-20.0, abs=1e-9)
    # Order of the points does not matter.
    assert bd_rate(CURVE[::-1], test[2:] + test[:2], method=method) == pytest.approx(-20.0, abs=1e-9)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_shifted_quality_gives_exact_gain(method):
    test = [(r, q + 0.5) for r, q in CURVE]
    assert bd_quality(CURVE, test, method=method) == pytest.approx(0.5, abs=1e-9)
    assert bd_map(CURVE, test, method=method) == pytest.approx(0.5, abs=1e-9)


@pytest.mark.parametrize("method", ["pchip", "cubic"])
def test_rate_difference_is_bd_rates_integrand_point_by_point(method):
    import numpy as np

    half = [(0.5 * r, q) for r, q in CURVE]
    lo, hi = CURVE[0][1], CURVE[-1][1]
    assert rate_difference_at(CURVE, half, [lo, (lo + hi) / 2, hi], method) == \
        pytest.approx([-50.0] * 3)
    assert rate_difference_at(CURVE, half, [lo - 1, hi + 1], method) == [None, None]
    # cheaper at low quality only: the saving lies where it was made, and its log-mean over
    # the common range is the BD-rate
    mixed = [(r * (0.5 if i < 2 else 0.9), q) for i, (r, q) in enumerate(CURVE)]
    qs = np.linspace(lo, hi, 2001)
    logs = np.log1p(np.array(rate_difference_at(CURVE, mixed, qs, method)) / 100)
    if method == "pchip":  # through every point (the cubic of 5 points is a least-squares fit)
        assert rate_difference_at(CURVE, mixed, [lo, hi], method) == pytest.approx([-50.0, -10.0])
    assert np.expm1(((logs[1:] + logs[:-1]) / 2).mean()) * 100 == \
        pytest.approx(bd_rate(CURVE, mixed, method), abs=1e-3)


def test_bd_rate_halves_say_which_half_of_the_range_holds_the_saving():
    import numpy as np

    lo, hi = CURVE[0][1], CURVE[-1][1]
    qs = np.linspace(lo, hi, 201)
    assert bd_rate_halves([-50.0] * 201) == pytest.approx((-50.0, -50.0, -50.0))
    # half the bits below the middle quality, the same above it
    step = np.where(qs <= (lo + hi) / 2, -50.0, 0.0)
    lower, upper, whole = bd_rate_halves(step)
    assert lower == pytest.approx(-50.0, abs=0.5) and upper == pytest.approx(0.0, abs=0.5)
    mixed = [(r * (0.5 if i < 2 else 0.9), q) for i, (r, q) in enumerate(CURVE)]
    assert bd_rate_halves(rate_difference_at(CURVE, mixed, qs))[2] == \
        pytest.approx(bd_rate(CURVE, mixed), abs=0.01)
    with pytest.raises(ValueError, match="at least 3 finite"):
        bd_rate_halves([-10.0, None])


def test_swapping_anchor_and_test_inverts_ratio():
    test = [(r * 0.7, q + 0.3) for r, q in CURVE]
    up = bd_rate(CURVE, test, min_overlap=0) / 100 + 1
    down = bd_rate(test, CURVE, min_overlap=0) / 100 + 1
    assert up * down == pytest.approx(1.0, abs=1e-12)


# --------------------------------------------------------------------------------------
# Non-monotonic curves
# --------------------------------------------------------------------------------------

NONMONO = [(0.1, 0.20), (0.2, 0.31), (0.3, 0.29), (0.5, 0.36), (0.9, 0.40), (1.2, 0.39)]


def test_frontier_is_running_maximum():
    assert frontier(NONMONO) == [(0.1, 0.20), (0.2, 0.31), (0.5, 0.36), (0.9, 0.40)]
    # equal rates: the better point wins; unsorted input is sorted
    assert frontier([(0.2, 1.0), (0.1, 0.5), (0.2, 2.0)]) == [(0.1, 0.5), (0.2, 2.0)]


def test_pchip_uses_frontier_and_warns():
    test = [(r * 0.5, q) for r, q in NONMONO]
    with pytest.warns(BDRateWarning, match="frontier"):
        value = bd_rate(NONMONO, test, method="pchip")
    assert value == pytest.approx(-50.0, abs=1e-9)
    # same as computing it on the frontier directly, silently
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert bd_rate(frontier(NONMONO), frontier(test)) == pytest.approx(value, abs=1e-12)


def test_cubic_tolerates_non_monotonic_but_warns():
    with pytest.warns(BDRateWarning, match="not monotonic"):
        value = bd_rate(NONMONO, [(r * 0.5, q) for r, q in NONMONO], method="cubic")
    assert math.isfinite(value)


# --------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------

def test_no_overlap_is_an_error_with_ranges():
    far = [(r, q + 100) for r, q in CURVE]
    with pytest.raises(BDRateError, match=r"anchor \[30, 39\], test \[130, 139\]"):
        bd_rate(CURVE, far)
    with pytest.raises(BDRateError, match="overlap"):
        bd_psnr(CURVE, [(r * 1000, q) for r, q in CURVE])


def test_small_overlap_is_an_error_unless_accepted():
    sliver = [(r, q + 8.5) for r, q in CURVE]  # quality ranges [30, 39] and [38.5, 47.5]
    lo, hi, frac = overlap((30, 39), (38.5, 47.5))
    assert (lo, hi) == (38.5, 39) and frac == pytest.approx(0.5 / 17.5)
    with pytest.raises(BDRateError, match="minimum 20 %"):
        bd_rate(CURVE, sliver)
    assert math.isfinite(bd_rate(CURVE, sliver, min_overlap=0))


def test_too_few_points():
    with pytest.raises(BDRateError, match="at least 4"):
        bd_rate(CURVE[:3], CURVE, method="cubic")
    with pytest.raises(BDRateError, match="at least 2"):
        bd_rate(CURVE[:1], CURVE, method="pchip")
    # a curve whose frontier collapses to one point
    with pytest.warns(BDRateWarning), pytest.raises(BDRateError, match="usable point"):
        bd_rate([(0.1, 0.5), (0.2, 0.4), (0.3, 0.3)], CURVE)


@pytest.mark.parametrize("bad", [[(0.0, 30.0)] + CURVE, [(0.1, float("nan"))] + CURVE,
                                 [(-1, 30)] + CURVE, [], [(1, 2, 3)], "abc"])
def test_invalid_points(bad):
    with pytest.raises(BDRateError):
        bd_rate(bad, CURVE)


def test_unknown_method():
    with pytest.raises(BDRateError, match="unknown method"):
        bd_rate(CURVE, CURVE, method="akima")


def test_table_keeps_going_past_a_bad_pair():
    curves = {"vvc": CURVE, "jpeg": [(r * 2, q) for r, q in CURVE],
              "icm": [(r * 0.5, q) for r, q in CURVE], "odd": [(r, q + 100) for r, q in CURVE]}
    table = bd_rate_pairs(curves, anchors=["vvc", "jpeg"])
    assert table[("icm", "vvc")]["bd_rate"] == pytest.approx(-50.0)
    assert table[("icm", "jpeg")]["bd_rate"] == pytest.approx(-75.0)
    assert table[("odd", "vvc")]["bd_rate"] is None and "overlap" in table[("odd", "vvc")]["error"]
    assert ("vvc", "vvc") not in table and ("jpeg", "vvc") not in table
