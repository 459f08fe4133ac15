"""Evaluation: the results schema, real-byte bpp, task accuracy, plots and BD-rate tables
from a saved results file, and the ``icm evaluate`` command.

Task networks here are the ci architectures with *untrained* weights (built, not
trained), so the test is fast and needs no cache; the trained ones are exercised end to
end by tests/test_reproduce.py.
"""
import json
import math

import numpy as np
import pytest
import torch

from icmlib import evaluation as ev
from icmlib.evaluation import results as res
from icmlib.evaluation import JPEG, LearnedCodec
from icmlib.codec import ICMCodec
from icmlib.presets import get_preset

PRESET = get_preset("ci")


@pytest.fixture(scope="module")
def networks():
    from icmlib.tasks import build_task_network, freeze_batchnorm

    torch.manual_seed(0)
    nets = {}
    for task in ("detection", "instance"):
        net = freeze_batchnorm(build_task_network(task, PRESET)).eval()
        for p in net.parameters():
            p.requires_grad_(False)
        nets[task] = net
    return nets


@pytest.fixture(scope="module")
def dataset():
    from icmlib.data import dataset_for

    return ev.subset(dataset_for(PRESET, split="val"), 2)


@pytest.fixture(scope="module")
def tiny_codec():
    torch.manual_seed(0)
    net = ICMCodec(8, 8, 0).eval()
    net.update(force=True)
    return LearnedCodec([net], "tiny")


def _fake_results(**kw):
    entries = [
        res.codec_entry("jpeg", [{"setting": q, "bpp": b, "psnr": p, "bbox_map": m}
                                 for q, b, p, m in [(10, 0.3, 25, 0.20), (30, 0.6, 28, 0.35),
                                                    (60, 1.0, 31, 0.45), (90, 2.0, 35, 0.50)]]),
        res.codec_entry("MSE baseline", [{"setting": i, "bpp": b, "psnr": p, "bbox_map": m}
                                         for i, b, p, m in [(0, 0.2, 26, 0.22), (1, 0.4, 29, 0.36),
                                                            (2, 0.7, 32, 0.46), (3, 1.2, 35, 0.51)]],
                        kind="learned", group="mse"),
        res.codec_entry("ICM dynamic (detection)",
                        [{"setting": i, "bpp": b, "psnr": p, "bbox_map": m}
                         for i, b, p, m in [(0, 0.1, 22, 0.30), (1, 0.2, 24, 0.42),
                                            (2, 0.35, 26, 0.49), (3, 0.6, 28, 0.53)]],
                        kind="learned", group="icm", task="detection", strategy="dynamic"),
        # far away in quality: no overlap with anything
        res.codec_entry("far", [{"setting": i, "bpp": b, "bbox_map": m}
                                for i, b, m in [(0, 5.0, 0.90), (1, 6.0, 0.91), (2, 7.0, 0.92),
                                                (3, 8.0, 0.93)]],
                        kind="learned", group="icm", task="detection", strategy="fixed"),
    ]
    return res.new_results(preset=PRESET, dataset={"name": "synthetic", "split": "val",
                                                   "num_images": 2},
                           tasks=["detection"], reference={"bbox_map": 0.52},
                           command="pytest", codecs=entries, **kw)


# ---- schema -----------------------------------------------------------------------------
def test_schema_round_trip(tmp_path):
    results = _fake_results(extra={"note": np.float32(1.5)})
    path = res.save_results(results, tmp_path / "r.json")
    back = res.load_results(path)
    assert back["schema"] == res.SCHEMA
    for key in res.REQUIRED_KEYS:
        assert key in back
    assert back["commit"] and back["device"]["cpu"]
    assert back["preset"]["name"] == "ci"
    assert [c["name"] for c in back["codecs"]] == [c["name"] for c in results["codecs"]]
    assert back["codecs"][0]["points"] == json.loads(json.dumps(results["codecs"][0]["points"]))
    assert back["extra"]["note"] == 1.5
    # points sorted by bpp whatever order they came in
    e = res.codec_entry("x", [{"setting": 2, "bpp": 2.0}, {"setting": 1, "bpp": 1.0}])
    assert [p["setting"] for p in e["points"]] == [1, 2]


def test_schema_errors(tmp_path):
    with pytest.raises(res.ResultsError, match="no results file"):
        res.load_results(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(res.ResultsError, match="not a readable JSON"):
        res.load_results(tmp_path / "bad.json")
    r = _fake_results()
    r["schema"] = "other/9"
    with pytest.raises(res.ResultsError, match="unknown results schema"):
        res.validate_results(r)
    r = _fake_results()
    del r["commit"]
    with pytest.raises(res.ResultsError, match="commit"):
        res.validate_results(r)
    r = _fake_results()
    r["codecs"].append(dict(r["codecs"][0]))
    with pytest.raises(res.ResultsError, match="appears twice"):
        res.validate_results(r)


# ---- evaluation -------------------------------------------------------------------------
def test_evaluate_anchor_and_learned_codec_bpp_from_real_bytes(dataset, networks, tiny_codec):
    images = ev.dataset_images(dataset)
    entries = {}
    for codec, settings, tasks in ((JPEG(), [5, 90], ("detection", "instance")),
                                   (tiny_codec, [0], ("detection",))):
        entry = ev.evaluate_codec(codec, settings, dataset, tasks, preset=PRESET,
                                  networks=networks, progress=False)
        entries[codec.name] = entry
        assert entry["name"] == codec.name and len(entry["points"]) == len(settings)
        for point in entry["points"]:
            # bpp is the mean of 8*coded bytes/pixels over the images, bpp_file the same of
            # whole files: checked here by encoding again (encoders are deterministic)
            files = [codec.encode(ev.tensor_to_pil(im), point["setting"]) for im in images]
            coded = [codec.rate_parts(f)["coded"] for f in files]
            pixels = [im.shape[1] * im.shape[2] for im in images]
            assert point["bpp"] == pytest.approx(np.mean([8 * c / n for c, n in zip(coded, pixels)]),
                                                 rel=1e-12)
            assert point["bpp_file"] == pytest.approx(
                np.mean([8 * len(f) / n for f, n in zip(files, pixels)]), rel=1e-12)
            assert point["bytes"] == sum(coded) and point["bytes_file"] == sum(map(len, files))
            over = point["overhead_bytes"]
            # JFIF APP0 (18 bytes) / the .icm container beyond its 8 bytes of side information
            assert over["container"] == (18 if codec.name == "jpeg" else 28)
            assert over["size_prefix"] == over["metadata"] == 0
            if codec.name == "tiny":
                assert over["headers"] == 8
            assert point["num_images"] == len(images) == 2
            assert 5 < point["psnr"] < 60
            assert 0 < point["ms_ssim"] <= 1
            for k in ("bbox_map", "bbox_map50") + (("segm_map", "segm_map50")
                                                   if "instance" in tasks else ()):
                assert 0.0 <= point[k] <= 1.0
            if "instance" not in tasks:
                assert "segm_map" not in point  # only the tasks asked for
    low, high = entries["jpeg"]["points"]
    assert low["bpp"] < high["bpp"] and low["psnr"] < high["psnr"]
    assert entries["jpeg"]["kind"] == "anchor" and entries["tiny"]["kind"] == "learned"


def test_reference_accuracy_on_originals(dataset, networks):
    from icmlib.tasks import evaluate_task

    ref = ev.reference_accuracy(("detection", "instance"), dataset, preset=PRESET,
                                networks=networks)
    assert set(ref) >= {"bbox_map", "bbox_map50", "segm_map", "segm_map50"}
    direct = evaluate_task(networks["instance"], "instance", dataset)
    assert ref["segm_map"] == pytest.approx(direct["segm_map"])


def test_subset_is_deterministic_and_checked(dataset):
    from icmlib.data import dataset_for

    full = dataset_for(PRESET, split="val")
    assert ev.subset(full, 2).ids == full.ids[:2] == dataset.ids
    assert ev.subset(full, None) is full
    with pytest.raises(ev.EvaluationError):
        ev.subset(full, 0)


def test_cached_evaluation_runs_once(tmp_path, monkeypatch):
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    calls = []

    def run():
        calls.append(1)
        return {"name": "x", "points": [{"setting": 1, "bpp": 0.5}]}

    key = {"codec": "x", "settings": [1]}
    a = ev.cached_evaluation(key, run)
    b = ev.cached_evaluation(key, run)
    assert a == b and len(calls) == 1
    ev.cached_evaluation({**key, "settings": [2]}, run)
    assert len(calls) == 2


# ---- from a saved file: plots, BD-rate table ----------------------------------------------
def test_plots_from_saved_file(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from icmlib.evaluation import plots

    path = res.save_results(_fake_results(), tmp_path / "r.json")
    ax = plots.plot_rd_curves(str(path), "bbox_map")
    labels = [l.get_label() for l in ax.get_lines()]
    assert "jpeg" in labels and "ICM dynamic (detection)" in labels
    assert any(l.startswith("uncompressed") for l in labels)  # the reference line
    ax.figure.savefig(tmp_path / "rd.png")
    assert (tmp_path / "rd.png").stat().st_size > 1000
    ax = plots.plot_rd_curves(path, "psnr", reference=False)
    assert not any(l.get_label().startswith("uncompressed") for l in ax.get_lines())
    ax, value = plots.plot_bd_illustration([(0.3, 0.2), (0.6, 0.35), (1.0, 0.45), (2.0, 0.5)],
                                           [(0.1, 0.3), (0.2, 0.42), (0.35, 0.49), (0.6, 0.53)])
    assert value < 0
    plt.close("all")


def test_bd_rate_table_in_paper_form():
    results = _fake_results()
    df = ev.bd_rate_table(results, metric="bbox_map")
    assert list(df.columns) == ["jpeg", "MSE baseline"]
    assert list(df.index) == ["ICM dynamic (detection)", "far"]
    cell = df.loc["ICM dynamic (detection)", "jpeg"]
    assert cell.endswith("%") and cell.startswith("-")
    assert df.loc["far", "jpeg"] == "n/a (too little overlap)"
    num = ev.bd_rate_table(results, metric="bbox_map", as_text=False)
    assert num.loc["ICM dynamic (detection)", "jpeg"] < -40
    assert math.isnan(num.loc["far", "jpeg"])
    from icmlib.evaluation.bdrate import bd_rate

    icm = [(p["bpp"], p["bbox_map"]) for p in results["codecs"][2]["points"]]
    jpeg = [(p["bpp"], p["bbox_map"]) for p in results["codecs"][0]["points"]]
    assert num.loc["ICM dynamic (detection)", "jpeg"] == pytest.approx(bd_rate(jpeg, icm))
    with pytest.raises(ev.EvaluationError, match="not in the results"):
        ev.bd_rate_table(results, anchors=["vvc"])
    md = ev.dataframe_to_markdown(df)
    assert md.count("\n") == 4 and "n/a (too little overlap)" in md


def test_bd_rate_on_whole_files_and_old_results_files():
    """rate="bpp_file" reads each point's whole-file rate; a point of an older file (only
    "bpp") serves for both rates, so its two tables agree."""
    old = _fake_results()
    assert ev.bd_rate_table(old, rate="bpp_file").equals(ev.bd_rate_table(old))
    assert ev.overhead_table(old).empty  # nothing measured: no overhead rows
    new = _fake_results()
    for c in new["codecs"]:  # a 36-byte container on 64×64 images: +0.07 bpp on every file
        for p in c["points"]:
            p["bpp_file"] = p["bpp"] + (8 * 36 / 4096 if c["kind"] == "learned" else 0.0)
            p["overhead_bytes"] = {"container": 36.0 if c["kind"] == "learned" else 0.0,
                                   "metadata": 0.0, "size_prefix": 0.0}
    coded = ev.bd_rate_table(new, metric="bbox_map", as_text=False)
    files = ev.bd_rate_table(new, metric="bbox_map", as_text=False, rate="bpp_file")
    assert files.index.name.endswith("(whole files)")
    # the container costs the learned codec bits against JPEG, which pays none here
    assert files.loc["ICM dynamic (detection)", "jpeg"] > coded.loc["ICM dynamic (detection)", "jpeg"]
    details = ev.bd_rate_details(new, ["jpeg"], "bbox_map", ["ICM dynamic (detection)"],
                                 rate="bpp_file")
    assert details[0]["rate"] == "bpp_file"
    assert details[0]["bd_rate"] == pytest.approx(files.loc["ICM dynamic (detection)", "jpeg"])
    table = ev.overhead_table(new)
    assert table.loc["ICM dynamic (detection)", "container [B]"] == 36
    assert table.loc["ICM dynamic (detection)", "not counted"] == pytest.approx(
        1 - 0.1 / (0.1 + 8 * 36 / 4096))
    with pytest.raises(ValueError, match="rate must be"):
        res.curve(new["codecs"][0], "bbox_map", rate="bytes")


def test_overhead_comparison_at_two_sizes(tiny_codec):
    df = ev.overhead_comparison([JPEG(), tiny_codec], sizes=((64, 64), (128, 64)))
    assert list(df.index) == ["jpeg", "tiny"]
    for size, pixels in (("64×64", 4096), ("128×64", 8192)):
        # JFIF APP0; the .icm container beyond the 8 bytes of side information
        assert df.loc["jpeg", (size, "not counted [B]")] == 18
        assert df.loc["tiny", (size, "not counted [B]")] == 28
        assert df.loc["tiny", (size, "headers [B]")] == 8
        assert df.loc["tiny", (size, "not counted [bpp]")] == pytest.approx(8 * 28 / pixels, abs=1e-4)


def test_summary_states_the_rule_and_shows_both_tables(tmp_path):
    from icmlib.evaluation import report

    results = _fake_results()
    assert "coded bitstream" in results["rate_rule"]
    md = ev.summary_markdown(results)
    assert results["rate_rule"] in md and "The same table on whole files" in md
    old = _fake_results()
    del old["rate_rule"]  # a file written before the split says what its bpp counted
    assert report.RATE_RULE_OLD in ev.summary_markdown(old)
    files = ev.write_outputs(results, tmp_path)
    assert files["bd_rate_file_md"].read_text().startswith("| codec (task)")
    assert (tmp_path / "bd_rate_file.csv").is_file()


def test_better_than_reference():
    results = _fake_results()
    better = ev.better_than_reference(results, "bbox_map")
    assert {(b["codec"], b["setting"]) for b in better} == {
        ("ICM dynamic (detection)", 3), ("far", 0), ("far", 1), ("far", 2), ("far", 3)}
    assert ev.better_than_reference(results, "segm_map") == []


# ---- the command --------------------------------------------------------------------------
def _without_vvc(tmp_path, monkeypatch):
    """A machine where `make vvc` never ran and no VVC binary is configured."""
    monkeypatch.setenv("ICM_VVC_TOOLS", str(tmp_path / "no-vvc-tools"))
    monkeypatch.delenv("ICM_VVC_ENCODER", raising=False)
    monkeypatch.delenv("ICM_VVC_DECODER", raising=False)


def test_cli_evaluate(tmp_path, monkeypatch, networks, capsys):
    from icmlib.cli import main

    monkeypatch.setattr(ev, "task_networks", lambda tasks, preset=None: networks)
    _without_vvc(tmp_path, monkeypatch)
    out = tmp_path / "ev.json"
    argv = ["evaluate", "--preset", "ci", "--anchor", "jpeg", "--anchor", "vvc",
            "--qualities", "10", "50", "--images", "1", "--tasks", "detection",
            "--out", str(out), "--plot", "--quiet"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "skipping anchor vvc" in err  # a missing external encoder is skipped, not a crash
    r = res.load_results(out)
    assert [c["name"] for c in r["codecs"]] == ["jpeg"]
    assert [p["setting"] for p in r["codecs"][0]["points"]] == [10, 50]
    assert r["command"].startswith("icm evaluate --preset ci --anchor jpeg")
    assert (tmp_path / "ev_bbox_map.png").is_file() and (tmp_path / "ev_psnr.png").is_file()
    # a second codec is added to the same file
    assert main(["evaluate", "--preset", "ci", "--anchor", "webp", "--qualities", "30",
                 "--images", "1", "--tasks", "detection", "--out", str(out), "--quiet"]) == 0
    assert [c["name"] for c in res.load_results(out)["codecs"]] == ["jpeg", "webp"]
    # user errors
    assert main(["evaluate", "--preset", "ci", "--out", str(out)]) == 2
    assert main(["evaluate", "--preset", "ci", "--anchor", "nope", "--out", str(out)]) == 2
    assert main(["evaluate", "--preset", "ci", "--model", str(tmp_path / "none.pt"),
                 "--out", str(out)]) == 2
    assert main(["evaluate", "--preset", "ci", "--anchor", "jpeg", "--images", "2",
                 "--tasks", "detection", "--out", str(out)]) == 2  # other images
    err = capsys.readouterr().err
    assert "nothing to evaluate" in err and "unknown anchor" in err
    assert "no codec checkpoint" in err and "other images" in err


def test_cli_evaluate_takes_every_rate_point_of_a_variable_rate_checkpoint(
        tmp_path, monkeypatch, networks):
    """``--model`` with a variable-rate checkpoint (here in the shipped set's compact form)
    is a learned codec of all its rate points, not a crash for want of a rate."""
    from icmlib.cli import main
    from icmlib.codec import ICMCodec, codec_checkpoint
    from icmlib.ship import compact

    monkeypatch.setattr(ev, "task_networks", lambda tasks, preset=None: networks)
    torch.manual_seed(0)
    net = ICMCodec(N=32, M=48, rates=2)
    with torch.no_grad():
        net.gain[1].fill_(8.0)
    net.update(force=True)
    torch.save(compact(codec_checkpoint(net)), tmp_path / "vr.pt")
    out = tmp_path / "vr.json"
    assert main(["evaluate", "--preset", "ci", "--model", str(tmp_path / "vr.pt"), "--name",
                 "vr", "--images", "1", "--tasks", "detection", "--out", str(out),
                 "--quiet"]) == 0
    points = res.load_results(out)["codecs"][0]["points"]
    assert [p["setting"] for p in points] == [0, 1]
    assert points[0]["bpp"] < points[1]["bpp"]


def test_task_networks_follow_icm_cache_force_and_device(tmp_path, monkeypatch):
    """The per-process memo of loaded networks is per cache folder, ``force`` retrains
    (and replaces the memo), and the networks sit on the evaluation device."""
    import icmlib.tasks

    calls = []

    def fake_task_network(task, preset=None, *, force=False, **kwargs):
        calls.append(force)
        return torch.nn.Linear(2, 2)

    monkeypatch.setattr(icmlib.tasks, "task_network", fake_task_network)
    monkeypatch.setenv("ICM_CACHE", str(tmp_path / "a"))
    a = ev.task_networks(["detection"], "ci")["detection"]
    assert ev.task_networks(["detection"], "ci")["detection"] is a and calls == [False]
    monkeypatch.setenv("ICM_CACHE", str(tmp_path / "b"))
    b = ev.task_networks(["detection"], "ci")["detection"]
    assert b is not a and calls == [False, False]
    c = ev.task_networks(["detection"], "ci", force=True)["detection"]
    assert c is not b and calls[-1] is True
    assert ev.task_networks(["detection"], "ci")["detection"] is c
    # a preset's device (here the meta device, standing in for CUDA) is where they run
    meta = ev.task_networks(["detection"], get_preset("ci", device="meta"))["detection"]
    assert meta.weight.device.type == "meta"


def test_gpu_preset_evaluates_on_cuda(monkeypatch):
    """The gpu preset evaluates where it trains: task networks and learned codecs on CUDA
    (the CPU only when CUDA is missing)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert ev.evaluation_device("gpu").type == "cuda"
    assert ev.learned_codec([ICMCodec(8, 8, 0)], "x", "gpu").device == "cuda"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert ev.evaluation_device("gpu").type == "cpu"
    assert ev.learned_codec([ICMCodec(8, 8, 0)], "x", "ci").device == "cpu"


def test_cli_evaluate_does_not_merge_runs_on_more_images(tmp_path, monkeypatch, networks):
    """Results files list at most the first 1000 image ids: runs on 2000 and 5000 images
    share them. Here the list is cut at 1 id, so 1 and 2 images share it."""
    from icmlib.cli import main

    info = ev.dataset_info
    monkeypatch.setattr(ev, "dataset_info", lambda ds: {**info(ds), "image_ids": info(ds)["image_ids"][:1]})
    monkeypatch.setattr(ev, "task_networks", lambda tasks, preset=None, **kw: networks)
    out = tmp_path / "ev.json"
    args = ["evaluate", "--preset", "ci", "--anchor", "jpeg", "--qualities", "10",
            "--tasks", "detection", "--out", str(out), "--quiet", "--images"]
    assert main(args + ["1"]) == 0
    assert main(args + ["2"]) == 2  # other images: refused, not merged
    assert res.load_results(out)["dataset"]["num_images"] == 1
