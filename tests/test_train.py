"""The training loop: learning, logging, resume, divergence, DDP, train-or-load, CLI."""
import math
import os
import socket

import pytest
import torch

from icmlib.codec import losses as losses_module
from icmlib.codec import load_codec
from icmlib.presets import get_preset
from icmlib.training import (Dynamic, TrainingDiverged, codec_for, read_log, resolve_rate,
                             train_codec)


pytestmark = pytest.mark.usefixtures("one_thread")


def ci(**overrides):
    return get_preset("ci", **overrides)


def _no_time(rows):
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_codec_key_covers_loader_workers_and_processes(monkeypatch):
    """Workers draw other crops, more processes other batches: other weights, other keys.
    Added only when not 0 workers / 1 process, so the codecs trained before keep theirs."""
    from icmlib.training import codec_config

    monkeypatch.delenv("WORLD_SIZE", raising=False)
    base = codec_config(ci(), None, "mse", 1)
    assert "num_workers" not in base and "world_size" not in base
    assert codec_config(ci(num_workers=2), None, "mse", 1) != base
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert codec_config(ci(), None, "mse", 1)["world_size"] == 2


def test_resolve_rate():
    p = ci()
    assert resolve_rate(p, 1) == (1, p.rd_lambdas[1])
    assert resolve_rate(p, "2") == (2, p.rd_lambdas[2])
    assert resolve_rate(p, "0.0067") == (None, 0.0067)
    with pytest.raises(ValueError, match="out of range"):
        resolve_rate(p, 9)
    with pytest.raises(ValueError, match="neither an index"):
        resolve_rate(p, "high")
    with pytest.raises(ValueError, match="positive"):
        resolve_rate(p, -0.1)


def test_short_run_lowers_the_loss_and_logs_every_step(tmp_path):
    steps = 30
    result = train_codec(ci(val_every=15), steps=steps, out_dir=tmp_path, progress=False, seed=0)
    rows = read_log(tmp_path / "train_log.csv")
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:  # every term and weight, every step
        for k in ("loss", "rate", "mse", "task", "w_rate", "w_mse", "w_task", "lr", "psnr"):
            assert math.isfinite(r[k]), (k, r)
        assert r["w_mse"] == pytest.approx(ci().rd_lambdas[0]) and r["w_task"] == 0.0
    first = sum(r["loss"] for r in rows[:5]) / 5
    last = sum(r["loss"] for r in rows[-5:]) / 5
    assert last < 0.6 * first, (first, last)
    val = read_log(tmp_path / "val_log.csv")
    assert [v["step"] for v in val] == [15, 30]
    assert all(v["bpp"] > 0 and v["psnr"] > 0 and v["bpp_estimate"] > 0 for v in val)
    assert result["logs"]["train"] == rows
    net = load_codec(tmp_path / "codec.pt")  # the final codec codes for real
    assert net.meta["strategy"] == "mse" and net.meta["steps"] == steps
    assert (tmp_path / "checkpoint.pt").is_file()


class _Killed(Exception):
    pass


def test_resume_reproduces_the_uninterrupted_run(tmp_path):
    p = ci(checkpoint_every=4, val_every=100)
    steps = 8
    full = train_codec(p, steps=steps, out_dir=tmp_path / "full", progress=False)

    def kill_at_6(step, row):
        if step == 6:  # two steps after the checkpoint at 4: those are lost and redone
            raise _Killed()

    with pytest.raises(_Killed):
        train_codec(p, steps=steps, out_dir=tmp_path / "cut", progress=False, on_step=kill_at_6)
    assert len(read_log(tmp_path / "cut" / "train_log.csv")) == 6
    resumed = train_codec(p, steps=steps, out_dir=tmp_path / "cut", progress=False, resume=True)
    assert _no_time(resumed["logs"]["train"]) == _no_time(full["logs"]["train"])
    for k, v in full["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k


def test_resume_refuses_other_settings(tmp_path):
    p = ci(checkpoint_every=2, val_every=100)
    train_codec(p, steps=2, out_dir=tmp_path, progress=False)
    with pytest.raises(ValueError, match="other settings.*lambda"):
        train_codec(p, rate_index=1, steps=2, out_dir=tmp_path, progress=False, resume=True)


def test_nan_stops_with_a_clear_error_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    p = ci(checkpoint_every=2, val_every=100)
    calls = {"n": 0}
    real_mse = losses_module.mse_loss

    def poisoned(x_hat, x):
        calls["n"] += 1
        value = real_mse(x_hat, x)
        return value * float("nan") if calls["n"] == 5 else value

    monkeypatch.setattr(losses_module, "mse_loss", poisoned)
    with pytest.raises(TrainingDiverged, match=r"became nan at step 5.*last good checkpoint"):
        train_codec(p, steps=8, out_dir=tmp_path, progress=False)
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=False)
    assert state["step"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())
    assert not (tmp_path / "codec.pt").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_worker(rank, world, port, out_dir, cache):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world), LOCAL_RANK=str(rank), ICM_CACHE=cache)
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        p = get_preset("ci", batch_size=2, checkpoint_every=2, val_every=100)
        result = train_codec(p, steps=3, out_dir=out_dir, progress=False)
        torch.save(result["state_dict"], os.path.join(out_dir, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_end_with_identical_weights(tmp_path):
    import torch.multiprocessing as mp

    from icmlib.codec import ICMCodec
    from icmlib.data import dataset_for

    dataset_for(ci(), "train")  # generate the world once, before the ranks start
    dataset_for(ci(), "val")
    from icmlib.cache import cache_root

    # the ranks share the parent's cache (where the world was just generated), however the
    # test was started: `make test` sets $ICM_CACHE, a bare pytest leaves the default
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path), str(cache_root())),
             nprocs=2, join=True)
    a = torch.load(tmp_path / "rank0.pt")
    b = torch.load(tmp_path / "rank1.pt")
    torch.manual_seed(ci().train_seed)
    init = ICMCodec.from_preset(ci()).state_dict()
    moved = False
    for k in a:
        assert torch.equal(a[k], b[k]), f"ranks disagree on {k}"
        if k in init and init[k].shape == a[k].shape and not torch.equal(init[k], a[k]):
            moved = True
    assert moved, "training did not change the weights"
    assert len(read_log(tmp_path / "train_log.csv")) == 3  # rank 0 alone logs


@pytest.mark.slow
def test_icm_dynamic_run_logs_the_documented_schedule(tmp_path):
    p = ci(val_every=6, checkpoint_every=6)
    steps = 6
    result = train_codec(p, task="detection", strategy="dynamic", steps=steps,
                         out_dir=tmp_path, progress=False)
    rows = read_log(tmp_path / "train_log.csv")
    lam = p.rd_lambdas[0]
    expect = Dynamic(lam, steps, p.icm_task_weight, p.icm_mse_weight, p.weighting_warmup,
                     p.weighting_ramp_end)
    for r in rows:
        w = expect.weights(int(r["step"]) - 1, {})
        assert (r["w_rate"], r["w_mse"], r["w_task"]) == pytest.approx((w["rate"], w["mse"], w["task"]))
        assert r["task"] > 0 and "task/loss_classifier" in r
    assert rows[0]["w_task"] == 0 and rows[-1]["w_task"] == pytest.approx(p.icm_task_weight * lam)
    val = read_log(tmp_path / "val_log.csv")
    assert "task_score" in val[-1] and 0 <= val[-1]["task_score"] <= 1
    assert result["meta"]["task"] == "detection"


def test_bad_arguments_give_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown strategy"):
        train_codec(ci(), strategy="gradnorm", out_dir=tmp_path)
    with pytest.raises(ValueError, match="needs a task"):
        train_codec(ci(), strategy="dynamic", out_dir=tmp_path)
    with pytest.raises(ValueError, match="takes no task|give no task"):
        train_codec(ci(), task="detection", strategy="mse", out_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown task"):
        train_codec(ci(), task="pose", strategy="fixed", out_dir=tmp_path)


def test_codec_for_trains_once_then_loads(capsys):
    p = ci(codec_steps=4, codec_base_rate=0, checkpoint_every=4, val_every=100)
    a = codec_for(p, progress=False)
    b = codec_for(p, progress=False)
    assert not a.training and a.meta["strategy"] == "mse"
    for k, v in a.state_dict().items():
        assert torch.equal(v, b.state_dict()[k])
    assert len(b.logs["train"]) == 4 and a.meta["init_from"] is None


def test_codec_recipe_fine_tunes_from_the_base_codec():
    """MSE codecs at other rates start from the base-rate codec, ICM codecs from the MSE
    codec of their rate (codec_parent), with the preset's step counts."""
    from icmlib.training import codec_parent, codec_run
    from icmlib.training.start import _state_hash

    p = ci(codec_steps=4, codec_finetune_steps=3, icm_steps=2, codec_base_rate=1,
           checkpoint_every=4, val_every=100, icm_val_every=1)
    assert codec_parent(p, None, 1) is None
    assert codec_parent(p, None, 0) == (None, "mse", 1)
    assert codec_parent(p, None, 0.01) == (None, "mse", 1)
    assert codec_parent(p, "detection", 0) == (None, "mse", 0)
    assert codec_parent(p.replace(codec_base_rate=-1), None, 0) is None
    with pytest.raises(ValueError, match="codec_base_rate"):
        codec_parent(p.replace(codec_base_rate=9), None, 0)
    low = codec_run(p, None, "mse", 0, progress=False)
    base = codec_run(p, None, "mse", 1, progress=False)
    assert len(base["logs"]["train"]) == 4 and base["meta"]["init_from"] is None
    assert len(low["logs"]["train"]) == 3
    assert low["meta"]["init_from"] == f"codec:{_state_hash(base['state_dict'])}"
    icm = codec_run(p, "detection", "fixed", 0, progress=False)
    assert len(icm["logs"]["train"]) == 2 and len(icm["logs"]["val"]) == 2  # icm_val_every
    assert icm["meta"]["init_from"] == f"codec:{_state_hash(low['state_dict'])}"


def test_variable_rate_recipe_one_codec_serves_every_rate(tmp_path, monkeypatch):
    """variable_rate: the MSE codec for all rates starts from the one-rate base codec (gains
    set from λ), the ICM codec from it; the rates take turns, each is validated, and
    codec_for returns a one-rate view of the shared weights."""
    # a cache of its own: validation periods are not part of the key, so a run cached by
    # another test with the same weights' settings would bring its own validation rows
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    import math

    from icmlib.codec import AtRate
    from icmlib.training import codec_config, codec_parent, codec_run

    p = ci(variable_rate=True, codec_steps=4, codec_finetune_steps=4, icm_steps=4,
           codec_base_rate=1, checkpoint_every=4, val_every=4, icm_val_every=4)
    assert codec_parent(p, None, "all") == (None, "mse", 1)
    assert codec_parent(p, "detection", "all") == (None, "mse", "all")
    # every rate index asks for the same (variable-rate) codec; an explicit λ does not
    assert codec_config(p, None, "mse", 0) == codec_config(p, None, "mse", 3)
    assert codec_config(p, None, "mse", 0.01) != codec_config(p, None, "mse", 0)
    base = codec_run(p.replace(variable_rate=False), None, "mse", 1, progress=False)
    vr = codec_run(p, None, "mse", 2, progress=False)
    assert vr["config"]["rates"] == len(p.rd_lambdas) and vr["meta"]["rate_index"] == "all"
    rates = [row["rate_index"] for row in vr["logs"]["train"]]
    assert rates == [0, 1, 2, 3]
    assert sorted(row["rate_index"] for row in vr["logs"]["val"]) == [0, 1, 2, 3]
    lam = p.rd_lambdas
    gain0 = vr["state_dict"]["gain"][0]  # started at sqrt(λ0/λ_base), moved by 4 steps
    assert abs(float(gain0.mean()) - math.sqrt(lam[0] / lam[1])) < 0.05
    assert vr["meta"]["init_from"] is not None and base["meta"]["init_from"] is None
    views = [codec_for(p, None, "mse", r, progress=False) for r in range(len(lam))]
    assert all(isinstance(v, AtRate) for v in views)
    assert views[0].net is not views[1].net or views[0].rate != views[1].rate
    assert [len(v.logs["val"]) for v in views] == [1, 1, 1, 1]
    icm = codec_run(p, "detection", "dynamic", 0, progress=False)
    assert icm["config"]["rates"] == len(lam) and "per_rate" not in icm["meta"]["weighting"]
    assert len(icm["logs"]["val"]) == len(lam) and "task_score" in icm["logs"]["val"][0]


def test_low_rate_codec_recipe():
    """low_rd_lambdas: a second variable-rate codec per (task, strategy), from the same parents
    (MSE-low from the base, ICM-low from MSE-low), with the same steps per rate point; the
    reproduction's rate points are both codecs' rates, lowest λ first; old keys unchanged."""
    from icmlib.training import codec_config
    from icmlib.training.recipe import LOW_RATES, _codec_config, rate_points, resolve_rate

    p = ci(variable_rate=True, codec_finetune_steps=8, icm_steps=12, codec_base_rate=1)
    low = p.replace(low_rd_lambdas=(0.0005, 0.001))
    with pytest.raises(ValueError, match="no low rate points"):
        resolve_rate(p, LOW_RATES)
    assert resolve_rate(low, "low") == ("low", [0.0005, 0.001])
    assert codec_config(low, "detection", "fixed", 0) == codec_config(p, "detection", "fixed", 0)
    mse_low = codec_config(low, None, "mse", LOW_RATES)
    icm_low = codec_config(low, "detection", "fixed", LOW_RATES)
    assert mse_low["steps"] == 4 and icm_low["steps"] == 6  # 2 of 4 rates' share
    assert mse_low["init_from"] == _codec_config(low, None, "mse", 1, None)  # one-rate base
    assert icm_low["init_from"] == mse_low and icm_low["lambda"] == [0.0005, 0.001]
    points = rate_points(low)
    assert [lam for _, _, lam in points] == sorted(low.low_rd_lambdas + low.rd_lambdas)
    assert points[:3] == [("low", 0, 0.0005), ("low", 1, 0.001), ("all", 0, p.rd_lambdas[0])]
    assert rate_points(p) == [("all", i, lam) for i, lam in enumerate(p.rd_lambdas)]
    assert rate_points(p.replace(variable_rate=False))[1] == (1, 0, p.rd_lambdas[1])
    with pytest.raises(ValueError, match="repeat"):
        rate_points(p.replace(low_rd_lambdas=(p.rd_lambdas[0],)))


def test_the_mse_baselines_own_lowest_rates():
    """mse_low_rd_lambdas: lower points for the MSE baseline only, one variable-rate MSE
    codec from MSE-low with the whole fine-tuning budget; no ICM codec has them, and no
    existing key changes."""
    from icmlib.ship import reproduction_checkpoints
    from icmlib.training import MSE_LOW_RATES, codec_config, has_rate, rate_points, resolve_rate

    low = ci(variable_rate=True, codec_finetune_steps=8, icm_steps=12, codec_base_rate=1,
             low_rd_lambdas=(0.0005, 0.001))
    both = low.replace(mse_low_rd_lambdas=(0.0001, 0.0002))  # as many as the low-rate codec
    with pytest.raises(ValueError, match="no rate points 'mse-low'"):
        resolve_rate(low, MSE_LOW_RATES)
    lowest = codec_config(both, None, "mse", MSE_LOW_RATES)
    assert lowest["init_from"] == codec_config(low, None, "mse", "low")
    assert lowest["steps"] == 8 and lowest["lambda"] == [0.0001, 0.0002]
    for task, strategy, rate in [(None, "mse", "low"), (None, "mse", 0),
                                 ("detection", "fixed", "low"), ("instance", "dynamic", 2)]:
        assert codec_config(both, task, strategy, rate) == codec_config(low, task, strategy, rate)
    with pytest.raises(ValueError, match="MSE baseline only"):
        codec_config(both, "detection", "fixed", MSE_LOW_RATES)
    assert rate_points(both) == [(MSE_LOW_RATES, 0, 0.0001), (MSE_LOW_RATES, 1, 0.0002)] + rate_points(low)
    assert has_rate(None, MSE_LOW_RATES) and not has_rate("detection", MSE_LOW_RATES)
    assert has_rate("detection", "low") and has_rate("detection", "all")
    added = [c for c in reproduction_checkpoints(both) if c not in reproduction_checkpoints(low)]
    assert added == [("codec", lowest)]


def test_the_mse_baselines_own_middle_rates():
    """mse_mid_rd_lambdas: MSE-only points between the low-rate codec's rates and
    rd_lambdas', where the ICM codecs' middle rates lie (the baseline's curve is measured
    there, not interpolated); made like "mse-low", and no existing key changes."""
    from icmlib.ship import reproduction_checkpoints
    from icmlib.training import (MSE_LOW_RATES, MSE_MID_RATES, codec_config, has_rate,
                                 rate_points, resolve_rate)

    low = ci(variable_rate=True, codec_finetune_steps=8, icm_steps=12, codec_base_rate=1,
             low_rd_lambdas=(0.0005, 0.001), mse_low_rd_lambdas=(0.0001, 0.0002))
    mid = low.replace(mse_mid_rd_lambdas=(0.002, 0.003))
    with pytest.raises(ValueError, match="no rate points 'mse-mid'"):
        resolve_rate(low, MSE_MID_RATES)
    middle = codec_config(mid, None, "mse", MSE_MID_RATES)
    assert middle["init_from"] == codec_config(low, None, "mse", "low")
    assert middle["steps"] == 8 and middle["lambda"] == [0.002, 0.003]
    assert middle != codec_config(mid, None, "mse", MSE_LOW_RATES)
    with pytest.raises(ValueError, match="MSE baseline only"):
        codec_config(mid, "instance", "auto", MSE_MID_RATES)
    points = rate_points(mid)
    assert [p[0] for p in points] == [MSE_LOW_RATES] * 2 + ["low"] * 2 + [MSE_MID_RATES] * 2 + ["all"] * 4
    assert points[4:6] == [(MSE_MID_RATES, 0, 0.002), (MSE_MID_RATES, 1, 0.003)]
    assert has_rate(None, MSE_MID_RATES) and not has_rate("detection", MSE_MID_RATES)
    added = [c for c in reproduction_checkpoints(mid) if c not in reproduction_checkpoints(low)]
    assert added == [("codec", middle)]
    with pytest.raises(ValueError, match="repeat a λ"):
        rate_points(mid.replace(mse_mid_rd_lambdas=(0.001, 0.003)))
    with pytest.raises(ValueError, match="has 3 λ, but .* has 2 .*give it as many"):
        codec_config(mid.replace(mse_mid_rd_lambdas=(0.002, 0.0025, 0.003)), None, "mse",
                     MSE_MID_RATES)


def test_the_reported_mse_baseline_ends_on_the_icm_codecs_crops(monkeypatch):
    """mse_finish_steps: the MSE baseline a reproduction reports is the MSE codec of its
    rate fine-tuned on the ICM codecs' crops and batches; the ICM codecs still start from
    the MSE codec (no key changes), and the shipped set lists the finished baseline."""
    from icmlib.ship import reproduction_checkpoints
    from icmlib.training import baseline_config, baseline_run, codec_config, codec_run
    from icmlib.training.start import _state_hash

    p = ci(codec_steps=3, codec_finetune_steps=2, icm_steps=2, codec_base_rate=1,
           val_every=100, batch_size=4, icm_batch_size=2)
    fin = p.replace(mse_finish_steps=3)
    assert baseline_config(p, 0) == codec_config(p, None, "mse", 0)
    key = baseline_config(fin, 0)
    assert key["init_from"] == codec_config(p, None, "mse", 0)
    assert (key["steps"], key["batch_size"], key["crop_size"]) == (3, 2, p.icm_crop_size)
    for task, strategy in [(None, "mse"), ("detection", "fixed"), ("instance", "dynamic")]:
        assert codec_config(fin, task, strategy, 0) == codec_config(p, task, strategy, 0)
    finished = baseline_run(fin, 0, progress=False)
    mse = codec_run(fin, None, "mse", 0, progress=False)
    assert finished["meta"]["init_from"] == f"codec:{_state_hash(mse['state_dict'])}"
    assert len(finished["logs"]["train"]) == 3 and finished["meta"]["steps"] == 3
    assert _state_hash(finished["state_dict"]) != _state_hash(mse["state_dict"])
    from icmlib.training import codec as codec_module
    monkeypatch.setattr(codec_module, "train_codec", lambda *a, **k: pytest.fail("trained again"))
    again = baseline_run(fin, 0, progress=False)
    assert _state_hash(again["state_dict"]) == _state_hash(finished["state_dict"])
    assert _state_hash(baseline_run(p, 0, progress=False)["state_dict"]) == _state_hash(
        mse["state_dict"])
    shipped, plain = reproduction_checkpoints(fin), reproduction_checkpoints(p)
    assert ("codec", key) in shipped and ("codec", key) not in plain
    assert ("codec", codec_config(p, None, "mse", 0)) not in shipped
    assert len(shipped) == len(plain)


def test_cli_train_and_errors(tmp_path, capsys):
    from icmlib.cli import main

    out = tmp_path / "run"
    assert main(["train", "--preset", "ci", "--strategy", "mse", "--rate", "1", "--steps", "2",
                 "--out", str(out), "--no-progress"]) == 0
    net = load_codec(out / "codec.pt")
    assert net.meta["rate"] == get_preset("ci").rd_lambdas[1]
    assert main(["train", "--preset", "ci", "--strategy", "dynamic", "--out", str(out)]) == 2
    assert "needs a task" in capsys.readouterr().err
    assert main(["train", "--preset", "ci", "--rate", "7", "--out", str(out)]) == 2
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert all(f"'{name}'" in shown for name in ("all", "low", "mse-low", "mse-mid"))


def test_training_works_when_called_under_no_grad(tmp_path, monkeypatch):
    """A LearnedCodec loads (and so may train) its networks lazily, inside an evaluator's
    torch.no_grad(): training must switch gradients on for itself."""
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    from icmlib.training import train_codec

    with torch.no_grad():
        ckpt = train_codec("ci", strategy="mse", steps=3, out_dir=tmp_path / "run", progress=False)
    assert "state_dict" in ckpt


@pytest.mark.parametrize("widget", [True, False])
def test_validation_lines_in_a_terminal_one_summary_in_a_notebook(widget, monkeypatch, capsys, tmp_path):
    """In a notebook (tqdm's widget bar) a chapter page shows one summary line, not a log
    of every validation; in a terminal each validation is a line under the bar."""
    import tqdm.auto
    import tqdm.notebook
    import tqdm.std

    monkeypatch.setattr(tqdm.auto, "tqdm", tqdm.notebook.tqdm if widget else tqdm.std.tqdm)
    train_codec(ci(codec_steps=6, val_every=2, checkpoint_every=6), out_dir=tmp_path, progress=True)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if line.startswith("step ")]
    summaries = [line for line in out.splitlines() if line.startswith("[icmlib] trained ")]
    if widget:
        assert lines == [] and len(summaries) == 1
        assert "6 steps in" in summaries[0] and "last validation, step 6: bpp=" in summaries[0]
    else:
        assert [line.split(":")[0] for line in lines] == ["step 2", "step 4", "step 6"]
        assert summaries == []


def test_resume_after_a_real_sigkill(tmp_path):
    """A training process killed by SIGKILL (no handler runs, nothing is flushed, a file
    may be half written) resumes from its last checkpoint and ends exactly where an
    uninterrupted run ends."""
    import signal
    import subprocess
    import sys
    import time

    p, steps, cut = ci(checkpoint_every=3, val_every=100), 24, tmp_path / "cut"
    script = ("import torch; torch.set_num_threads(1)\n"
              "from icmlib.presets import get_preset\nfrom icmlib.training import train_codec\n"
              f"train_codec(get_preset('ci', checkpoint_every=3, val_every=100), steps={steps}, "
              f"out_dir={str(cut)!r}, progress=False)\n")
    child = subprocess.Popen([sys.executable, "-c", script])
    log, deadline = cut / "train_log.csv", time.time() + 600
    try:
        while child.poll() is None and time.time() < deadline:
            if log.is_file() and len(log.read_text().splitlines()) > 8:  # past step 7
                break
            time.sleep(0.02)
        assert child.poll() is None, "the run ended before it could be killed"
        child.send_signal(signal.SIGKILL)
    finally:
        if child.poll() is None:
            child.kill()
        child.wait()
    assert child.returncode == -signal.SIGKILL and not (cut / "codec.pt").exists()
    resumed = train_codec(p, steps=steps, out_dir=cut, progress=False, resume=True)
    full = train_codec(p, steps=steps, out_dir=tmp_path / "full", progress=False)
    assert _no_time(resumed["logs"]["train"]) == _no_time(full["logs"]["train"])
    for k, v in full["state_dict"].items():
        assert torch.equal(v, resumed["state_dict"][k]), k


def test_training_with_loader_workers(tmp_path):
    """num_workers > 0: the run trains, its crops are reproducible from the seed, and the
    caller's dataset keeps its own seed (the loader used to overwrite it)."""
    from icmlib.data import dataset_for
    from icmlib.training.batches import Batches

    p = ci(num_workers=2, val_every=100)
    ds = dataset_for(p, "train", train=True, seed=7)
    batches = [next(Batches(ds, 4, 0, 0, 1, 2).from_step(s))[0] for s in (0, 0, 5)]
    assert ds.seed == 7
    assert torch.equal(batches[0], batches[1]) and not torch.equal(batches[0], batches[2])
    out = train_codec(p, steps=4, out_dir=tmp_path, progress=False)
    assert [r["step"] for r in out["logs"]["train"]] == [1, 2, 3, 4]
    assert all(math.isfinite(r["loss"]) for r in out["logs"]["train"])


def test_the_synthesis_may_see_rounded_latents_while_an_icm_codec_trains(tmp_path, monkeypatch):
    """icm_synthesis_quantizer="ste": the synthesis gets y rounded around its mean (what is
    decoded) with a straight-through gradient, the rate term keeps the noise; the setting is
    in an ICM codec's key only when it is not the default, never in an MSE codec's."""
    from icmlib.codec import ICMCodec
    from icmlib.training import baseline_config, codec_config, codec_run, train_codec

    torch.manual_seed(0)
    net = ICMCodec(N=16, M=24).train()
    x = torch.rand(1, 3, 64, 64)
    outs = {}
    for mode in ("noise", "ste"):
        net.synthesis_quantizer = mode
        torch.manual_seed(1)
        outs[mode] = net(x)
    decoded = net.eval()(x)["x_hat"]
    for term in ("y", "z"):  # the rate term is the same
        assert torch.equal(outs["noise"]["likelihoods"][term], outs["ste"]["likelihoods"][term])
    gap = {m: (outs[m]["x_hat"] - decoded).abs().mean().item() for m in outs}
    assert gap["ste"] < 0.1 * gap["noise"], gap  # only ẑ's noise is left between them
    net.train()
    outs["ste"]["x_hat"].sum().backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in net.g_a.parameters())

    p = ci()
    ste = p.replace(icm_synthesis_quantizer="ste")
    assert "icm_synthesis_quantizer" not in codec_config(p, "detection", "fixed", 0)
    assert codec_config(ste, "detection", "fixed", 0)["icm_synthesis_quantizer"] == "ste"
    assert codec_config(ste, None, "mse", 0) == codec_config(p, None, "mse", 0)
    # the MSE baseline's finishing stage has a setting of its own, in its key alone
    finish = p.replace(mse_finish_steps=2)
    finish_ste = finish.replace(baseline_synthesis_quantizer="ste")
    assert "synthesis_quantizer" not in baseline_config(finish, 0)
    assert baseline_config(finish_ste, 0)["synthesis_quantizer"] == "ste"
    assert baseline_config(finish_ste, 0)["init_from"] == baseline_config(finish, 0)["init_from"]
    assert codec_config(finish_ste, "detection", "fixed", 0) == codec_config(
        finish, "detection", "fixed", 0)
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    # the recipe sets it: the MSE codec an ICM codec starts from trains on noise, the ICM
    # codec on rounded latents
    seen = []
    forward = ICMCodec.forward

    def spy(self, x, rate=None):
        if self.training:
            seen.append(self.synthesis_quantizer)
        return forward(self, x, rate)

    monkeypatch.setattr(ICMCodec, "forward", spy)
    codec_run(ste, "detection", "fixed", 0, progress=False)
    assert seen[0] == "noise" and seen[-1] == "ste"
    assert seen.count("ste") == ste.icm_steps
    monkeypatch.setattr(ICMCodec, "forward", forward)
    with pytest.raises(ValueError, match="icm_synthesis_quantizer must be one of"):
        codec_run(p.replace(icm_synthesis_quantizer="round"), "detection", "fixed", 0,
                  progress=False)
    with pytest.raises(ValueError, match="synthesis_quantizer must be one of"):
        train_codec(p, None, "mse", 0, steps=1, synthesis_quantizer="round", progress=False)
    with pytest.raises(ValueError, match="mse_finish_steps=0"):
        baseline_config(p.replace(baseline_synthesis_quantizer="ste"), 0)
    # a quantizer given to train_codec is in the run's key (its folder), as the preset's is
    dirs = {q: train_codec(p, "detection", "fixed", 0, steps=1, synthesis_quantizer=q,
                           progress=False)["run_dir"] for q in ("noise", "ste")}
    assert dirs["noise"] != dirs["ste"]
    assert dirs["ste"] == train_codec(ste, "detection", "fixed", 0, steps=1,
                                      progress=False)["run_dir"]


def test_the_feature_weight_is_in_an_icm_codecs_key_only_when_set(tmp_path):
    """icm_feature_weight φ > 0: in a detection or instance codec's key (never an MSE or a
    semantic codec's), logged as ``task/feature`` while it trains; refused below 0."""
    from icmlib.training import codec_config, train_codec

    p = ci()
    feat = p.replace(icm_feature_weight=2.5)
    assert "icm_feature_weight" not in codec_config(p, "detection", "fixed", 0)
    assert codec_config(feat, "detection", "fixed", 0)["icm_feature_weight"] == 2.5
    assert codec_config(feat, None, "mse", 0) == codec_config(p, None, "mse", 0)
    out = train_codec(feat, "detection", "fixed", 0, steps=2, out_dir=tmp_path,
                      progress=False)
    rows = out["logs"]["train"]
    assert all(r["task/feature"] > 0 and math.isfinite(r["task/feature"]) for r in rows)
    for bad in (-1.0, "2", True):
        with pytest.raises(ValueError, match="icm_feature_weight must be a number >= 0"):
            codec_config(p.replace(icm_feature_weight=bad), "detection", "fixed", 0)
    # the semantic task's U-Net has no feature pyramid: its codecs ignore φ, keys unchanged
    assert codec_config(feat, "semantic", "fixed", 0) == codec_config(p, "semantic", "fixed", 0)
