"""``icm reproduce --preset ci`` end to end: every output is written, the results file loads
and plots on its own, and a second run trains and evaluates nothing again.

Slow (it trains the ci task networks if the cache does not hold them, 4 MSE and 16 ICM
codecs of a few steps each, and evaluates them and the ci anchors on 4 images).
"""
import pytest

from icmlib import evaluation
from icmlib.cache import checkpoint_path
from icmlib.evaluation import reproduction as rp
from icmlib.evaluation import results as res
from icmlib.presets import get_preset
from icmlib.training import baseline_config

OUTPUTS = ("results.json", "rd_detection.png", "rd_instance.png", "rd_psnr.png",
           "weighting_detection.png", "weighting_instance.png", "bd_rate.md", "bd_rate.csv",
           "summary.md", "bitmaps.png", "bd_rate_file.md", "bd_rate_file.csv",
           "object_shares.png")


def test_spread_settings():
    assert rp.spread([1, 2, 3, 4, 5, 6, 7, 8, 9], 4) == [1, 4, 6, 9]
    assert rp.spread([1, 2, 3], 0) == [1, 2, 3]
    assert rp.spread([1, 2, 3], 5) == [1, 2, 3]


def test_equal_quality_rates_interpolates_in_log_rate():
    def codec(name, pts):
        return {"name": name, "points": [{"bpp": b, "psnr": q} for b, q in pts]}

    results = {"codecs": [codec("mse", [(0.2, 22.0), (0.5, 24.0)]),
                          codec("a", [(0.1, 20.0), (0.4, 26.0)]),
                          codec("b", [(0.6, 25.0), (0.9, 30.0)]),
                          codec("c", [(0.01, 10.0), (0.02, 12.0)]),
                          # a non-monotonic point is dropped (running-maximum frontier)
                          codec("d", [(0.1, 20.0), (0.2, 19.0), (0.4, 28.0)])]}
    out = evaluation.equal_quality_rates(results, "mse", ["a", "b", "c", "d"])
    assert out["bpp"] == 0.5 and out["quality"] == 24.0
    assert out["anchors"]["a"] == pytest.approx(0.1 * 4 ** (4 / 6))
    assert out["anchors"]["b"].startswith("below its lowest setting")
    assert out["anchors"]["c"].startswith("above its highest setting")
    assert out["anchors"]["d"] == pytest.approx(0.1 * 4 ** (4 / 8))


def test_object_shares_compare_at_equal_bpp_and_at_the_same_rate_point():
    def codec(name, group, pts):
        return {"name": name, "kind": "learned", "group": group,
                "points": [{"setting": i, "bpp": b, "object_bit_share": s,
                            "object_area_share": 0.1} for i, (b, s) in enumerate(pts)]}

    results = {"codecs": [codec("mse", "mse", [(0.1, 0.20), (0.4, 0.10)]),
                          codec("icm", "icm", [(0.05, 0.40), (0.2, 0.30)]),
                          {"name": "jpeg", "kind": "anchor", "points": [{"bpp": 0.3}]}]}
    rows = {(r["codec"], r["setting"]): r for r in evaluation.object_share_table(results)}
    assert ("jpeg", 0) not in rows
    assert rows[("icm", 0)]["vs_mse"] == pytest.approx(2.0)
    assert rows[("icm", 0)]["vs_mse_equal_bpp"] is None  # below the baseline's rates
    # at 0.2 bpp, halfway in log rate between 0.1 and 0.4: the baseline spends 15 %
    assert rows[("icm", 1)]["vs_mse_equal_bpp"] == pytest.approx(0.30 / 0.15)
    assert rows[("icm", 1)]["vs_mse"] == pytest.approx(3.0)


def test_saving_by_accuracy_says_where_along_the_curves_the_bd_rate_lies():
    def codec(name, group, task, pts):
        return {"name": name, "kind": "learned", "group": group, "task": task,
                "strategy": "fixed", "points": [{"setting": i, "bpp": b, "bbox_map": q}
                                                for i, (b, q) in enumerate(pts)]}

    mse = [(0.1, 0.30), (0.2, 0.40), (0.4, 0.50), (0.8, 0.55)]
    # half the bits up to mAP 0.40, then 10 % fewer; one point outside the baseline's range
    icm = [(0.05, 0.30), (0.1, 0.40), (0.36, 0.50), (0.72, 0.55), (0.9, 0.6)]
    results = {"tasks": ["detection"], "codecs": [
        codec("MSE baseline", "mse", None, mse), codec("ICM fixed (detection)", "icm", "detection", icm),
        codec("ICM fixed (instance)", "icm", "instance", icm)]}
    accuracies, percents = evaluation.saving_along_curves(results, "detection")["ICM fixed (detection)"]
    assert (accuracies[0], accuracies[-1]) == pytest.approx((0.30, 0.55))
    assert percents[0] == pytest.approx(-50.0) and percents[-1] == pytest.approx(-10.0)
    row = evaluation.saving_by_accuracy(results).loc[("detection", "ICM fixed (detection)")]
    assert row["accuracy range"] == "bbox_map 0.300–0.550"
    lower, upper = (float(row[h].rstrip(" %")) for h in ("lower half", "upper half"))
    assert lower < upper < 0
    whole = evaluation.bd_rate(mse, icm)
    assert float(row["whole range"].rstrip(" %")) == pytest.approx(whole, abs=0.1)


def test_budget_fields_in_presets():
    for name in ("ci", "cpu", "gpu"):
        p = get_preset(name)
        assert len(p.rd_lambdas) >= 4  # at least 4 rate points per codec
        assert -1 <= p.codec_base_rate < len(p.rd_lambdas)
        # the paper's dynamic weighting everywhere; gpu runs only it (8 ICM codecs, not 16)
        assert set(p.repro_strategies) >= ({"dynamic"} if name == "gpu" else {"fixed", "dynamic"})
    assert get_preset("ci").icm_steps < get_preset("cpu").icm_steps


@pytest.mark.slow
def test_reproduce_ci_end_to_end(tmp_path, monkeypatch, capsys):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from icmlib.evaluation import accuracy, evaluate, plots
    from icmlib.training import codec as train
    from icmlib.cli import main

    # a machine without VVC (make vvc not run): the anchor is skipped with its message
    monkeypatch.setenv("ICM_VVC_TOOLS", str(tmp_path / "no-vvc-tools"))
    monkeypatch.delenv("ICM_VVC_ENCODER", raising=False)
    monkeypatch.delenv("ICM_VVC_DECODER", raising=False)
    out = tmp_path / "repro"
    assert main(["reproduce", "--preset", "ci", "--out", str(out), "--quiet"]) == 0
    for name in OUTPUTS:
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    results = res.load_results(out / "results.json")
    assert results["command"] == f"icm reproduce --preset ci --out {out}"
    assert results["preset"]["name"] == "ci" and results["commit"]
    assert results["dataset"]["num_images"] == get_preset("ci").repro_eval_images
    names = [c["name"] for c in results["codecs"]]
    n_rates = len(get_preset("ci").rd_lambdas)
    for task in ("detection", "instance"):
        for strategy in ("fixed", "dynamic"):
            codec = res.find_codec(results, evaluation.icm_name(task, strategy))
            assert len(codec["points"]) == n_rates >= 4
            assert codec["task"] == task and codec["strategy"] == strategy
    assert len(res.find_codec(results, evaluation.mse_name())["points"]) == n_rates
    assert {"jpeg", "webp"} <= set(names)
    assert "vvc" in results["extra"]["skipped_anchors"]  # skipped with its message
    assert "ICM_VVC_ENCODER" in results["extra"]["skipped_anchors"]["vvc"]
    for key in ("bbox_map", "segm_map"):
        assert key in results["reference"]
    # every point's bpp is positive and comes with its byte count
    for c in results["codecs"]:
        for p in c["points"]:
            assert p["bpp"] > 0 and p["bytes"] > 0
    # training logs for the weighting comparison, per ICM run
    runs = results["extra"]["training"]
    assert len(runs) == 2 * 2 * n_rates
    assert all(r["val"] and r["train"] for r in runs)
    summary = (out / "summary.md").read_text()
    assert "BD-rate" in summary and "uncompressed" in summary
    # where the bits go: every learned point knows its share of bits inside objects
    for c in results["codecs"]:
        if c["kind"] == "learned":
            assert all(0 <= p["object_bit_share"] <= 1 and 0 < p["object_area_share"] < 1
                       for p in c["points"])
    assert "Where the bits go" in summary and "×MSE" in summary
    # the yardstick: a codec spending only on objects, between their area and 100 %
    followed = results["extra"]["object_share_if_bits_followed_objects"]
    area = results["codecs"][0]["points"][0]["object_area_share"]
    assert area < followed <= 1 and f"{followed:.0%} of them inside objects" in summary
    assert results["dataset"]["split"] == "test"
    md = (out / "bd_rate.md").read_text()
    assert "detection: ICM dynamic (detection)" in md and "instance: ICM fixed (instance)" in md

    # plots straight from the file, no evaluation
    ax = plots.plot_rd_curves(out / "results.json", "segm_map")
    assert len(ax.get_lines()) >= 4
    plots.plot_weighting_comparison(out / "results.json", "detection")
    plt.close("all")
    table = evaluation.paper_table(results)
    assert table.shape[0] == 2 * 3  # per task: MSE baseline + 2 ICM codecs

    # resumable: a second run reuses every codec and every evaluation
    def fail(*a, **k):
        raise AssertionError("the second run should not train or evaluate anything")

    monkeypatch.setattr(train, "train_codec", fail)
    monkeypatch.setattr(evaluate, "evaluate_codec", fail)
    monkeypatch.setattr(accuracy, "reference_accuracy", fail)
    out2 = tmp_path / "again"
    assert main(["reproduce", "--preset", "ci", "--out", str(out2), "--quiet"]) == 0
    again = res.load_results(out2 / "results.json")
    assert [c["points"] for c in again["codecs"]] == [c["points"] for c in results["codecs"]]


@pytest.mark.slow
def test_reproduce_variable_rate_codecs(tmp_path):
    """The cpu recipe on ci sizes: one variable-rate codec per (task, strategy) gives every
    rate point; the weighting runs are split per rate; retrain ignores a shipped set."""
    p = get_preset("ci", variable_rate=True, repro_strategies=("dynamic",), codec_steps=6,
                   codec_finetune_steps=4, icm_steps=4, repro_anchors=("jpeg",),
                   low_rd_lambdas=(0.0005,), mse_low_rd_lambdas=(0.0001,),
                   mse_mid_rd_lambdas=(0.002,), mse_finish_steps=2)
    results = evaluation.reproduce(p, tmp_path / "vr", progress=False)
    lambdas = sorted(p.low_rd_lambdas + p.rd_lambdas)
    n_rates = len(lambdas)  # the low-rate codec's point first, then rd_lambdas' codec's
    # the MSE baseline's own points (lowest, middle) among them: point numbers are λ's
    mse = res.find_codec(results, evaluation.mse_name())
    every = sorted(lambdas + [0.0001, 0.002])
    assert [pt["setting"] for pt in mse["points"]] == list(range(n_rates + 2))
    assert mse["lambdas"] == every
    icm_settings = [every.index(l) for l in lambdas]  # 1, 3, 4, ...: no 0 (mse-low), 2 (mse-mid)
    for name in (evaluation.icm_name("detection", "dynamic"),
                 evaluation.icm_name("instance", "dynamic")):
        codec = res.find_codec(results, name)
        assert [pt["setting"] for pt in codec["points"]] == icm_settings
        assert codec["lambdas"] == lambdas
        bpps = [pt["bpp"] for pt in codec["points"]]
        # the gains give each of a codec's rate points its own rate (the low codec's one
        # point may tie with the other codec's lowest, both at the floor of a 6-step codec)
        assert len(set(bpps[1:])) == n_rates - 1 and bpps[0] <= min(bpps[1:])
    runs = results["extra"]["training"]
    assert len(runs) == 2 * n_rates and {r["rate_index"] for r in runs} == set(icm_settings)
    assert all(len(r["val"]) == 1 and r["lambda"] == mse["lambdas"][r["rate_index"]] for r in runs)
    assert list(results["extra"]["budget"]["low_rd_lambdas"]) == [0.0005]
    assert list(results["extra"]["budget"]["mse_low_rd_lambdas"]) == [0.0001]
    assert list(results["extra"]["budget"]["mse_mid_rd_lambdas"]) == [0.002]
    # the baseline reported is the MSE codecs finished on the ICM codecs' crops
    assert results["extra"]["budget"]["mse_finish_steps"] == 2
    assert all(checkpoint_path("codec", baseline_config(p, r)).is_file()
               for r in ("all", "low", "mse-low", "mse-mid"))
    assert (tmp_path / "vr" / "bitmaps.png").is_file()  # at a point every codec has
    assert "retraining everything" in rp.retrain_estimate()
    # the chapters' view of the same codecs: one LearnedCodec each, settings = point numbers
    check_reproduction_codecs(p, icm_settings, n_rates + 2)


def check_reproduction_codecs(p, icm_settings, n_points):
    """``reproduction_codec`` gives the reproduction's networks at its point numbers."""
    from icmlib.codec import fingerprint
    from icmlib.training import codec_at_rate

    baseline = evaluation.reproduction_codec(p)
    icm = evaluation.reproduction_codec(p, "detection", "dynamic")
    assert baseline.name == evaluation.mse_name() and list(baseline.qualities) == list(range(n_points))
    assert icm.name == evaluation.icm_name("detection", "dynamic")
    assert list(icm.qualities) == icm_settings
    trained = evaluation.train_codecs(p, tasks=("detection",), strategies=("dynamic",),
                                      progress=False)  # the cache's: nothing trains again
    for codec in (baseline, icm):
        for point, ckpt in trained[codec.name].items():
            expected = codec_at_rate(ckpt, rp.rate_in_checkpoint(p, point))
            assert fingerprint(codec.model(point)) == fingerprint(expected), (codec.name, point)


def test_reproduce_gives_the_caller_its_thread_count_back(tmp_path, monkeypatch):
    """reproduce caps torch's threads on the cpu preset; afterwards (here: after an error
    in its first step) the caller has its own setting again."""
    import torch

    from icmlib.evaluation import accuracy

    class Stop(Exception):
        pass

    def stop(*args, **kwargs):
        raise Stop

    monkeypatch.setattr(accuracy, "task_networks", stop)
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    try:
        with pytest.raises(Stop):
            evaluation.reproduce("ci", tmp_path / "r", progress=False)
        assert torch.get_num_threads() == 4
    finally:
        torch.set_num_threads(before)
