"""The training engine on its own: the loop, the run state, the checkpoint file, the reporter.

Small models and no data set, so each runs in well under a second; the codec's training
through the engine (resume after a kill, DDP, workers) is tested in test_train.py.
"""
import random

import numpy as np
import pytest
import torch

from icmlib.engine import (Processes, Reporter, RunState, TrainingDiverged, check_finite, every,
                           isolated_rng, load_checkpoint, read_log, save_checkpoint, train_loop)


def _toy(seed=0):
    torch.manual_seed(seed)
    np.random.seed(seed)
    net = torch.nn.Linear(3, 1)
    opt = torch.optim.Adam(net.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, 3, gamma=0.5)
    return net, opt, sched


def _step_fn(net, opt, sched):
    def step(i):
        x = torch.randn(4, 3)  # draws from the global torch stream: resume must restore it
        loss = (net(x) - float(np.random.rand())).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        return {"step": i + 1, "loss": float(loss.detach())}
    return step


def _train(steps, folder, stop_at=None, resume=False):
    """A toy run with a checkpoint every 2 steps; ``stop_at`` kills it after that step."""
    net, opt, sched = _toy()
    run = RunState({"model": net, "opt": opt, "sched": sched})
    config = {"lr": 0.1}
    if resume:
        assert load_checkpoint(folder / "ckpt.pt", run, config)
    rows = []

    def kill(step, row):
        if step == stop_at:
            raise KeyboardInterrupt

    train_loop(_step_fn(net, opt, sched), run, steps,
               [lambda s, row: rows.append(row),
                every(2, lambda s, row: save_checkpoint(folder / "ckpt.pt", run, config), steps),
                kill])
    return net, rows, run


def test_resume_continues_the_uninterrupted_run_exactly(tmp_path):
    full, full_rows, _ = _train(7, tmp_path / "full")
    with pytest.raises(KeyboardInterrupt):
        _train(7, tmp_path / "cut", stop_at=5)  # the checkpoint of step 4 survives
    resumed, rows, run = _train(7, tmp_path / "cut", resume=True)
    assert [r["step"] for r in rows] == [5, 6, 7] and run.step == 7
    assert rows == full_rows[4:]
    for a, b in zip(full.parameters(), resumed.parameters()):
        assert torch.equal(a, b)


def test_a_checkpoint_of_other_settings_or_processes_is_refused(tmp_path):
    net, opt, sched = _toy()
    run = RunState({"model": net, "opt": opt})
    save_checkpoint(tmp_path / "c.pt", run, {"lr": 0.1, "steps": 4})
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.1 -> 0.2\)"):
        load_checkpoint(tmp_path / "c.pt", run, {"lr": 0.2, "steps": 4})
    two = RunState({"model": net, "opt": opt}, procs=Processes(False, 0, 2, 0))
    with pytest.raises(ValueError, match="1 process\\(es\\), this one has 2"):
        load_checkpoint(tmp_path / "c.pt", two, {"lr": 0.1, "steps": 4})
    assert not load_checkpoint(tmp_path / "missing.pt", run, {})


def test_run_state_restores_every_random_stream_and_the_datasets():
    class Data:
        _rng = np.random.default_rng(5)
        _rng_worker = None

    data = Data()
    run = RunState({}, dataset=data, step=3)
    state = run.state_dict()
    before = (torch.rand(2), np.random.rand(), random.random(), data._rng.random())
    run2 = RunState({}, dataset=data)
    run2.load_state_dict(state)
    after = (torch.rand(2), np.random.rand(), random.random(), data._rng.random())
    assert run2.step == 3
    assert torch.equal(before[0], after[0]) and before[1:] == after[1:]


def test_isolated_rng_consumes_no_random_state():
    torch.manual_seed(1)
    np.random.seed(1)
    expected = (torch.rand(1), np.random.rand())
    torch.manual_seed(1)
    np.random.seed(1)
    with isolated_rng():
        torch.rand(5), np.random.rand(5), random.random()
    assert torch.equal(torch.rand(1), expected[0]) and np.random.rand() == expected[1]


def test_loop_stops_when_a_callback_says_so_and_every_calls_at_the_end():
    calls, run = [], RunState({})

    def stop_at_4(step, row):
        run.stopped = step == 4

    train_loop(lambda i: {"i": i}, run, 10,
               [every(3, lambda s, r: calls.append(s), last=10), stop_at_4])
    assert run.step == 4 and calls == [3]
    calls.clear()
    train_loop(lambda i: {}, RunState({}), 7, [every(3, lambda s, r: calls.append(s), last=7)])
    assert calls == [3, 6, 7]


def test_divergence_names_the_step_and_what_became_nonfinite():
    check_finite(1.0, "loss", 0)
    with pytest.raises(TrainingDiverged, match=r"the loss became nan at step 5 \(mse=1\)"):
        check_finite(float("nan"), "loss", 4, " (mse=1)")


def test_reporter_keeps_the_rows_up_to_the_resumed_step(tmp_path):
    logs = {"train": "train_log.csv"}
    rep = Reporter(tmp_path, logs, total=6, progress=False)
    for s in range(1, 7):
        rep.log("train", {"step": s, "loss": 1.0 / s})
    rep.close()
    rep = Reporter(tmp_path, logs, resume_at=4, total=6, progress=False)
    rep.log("train", {"step": 5, "loss": 0.5})
    rep.close()
    rows = read_log(tmp_path / "train_log.csv")
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5] and rows[-1]["loss"] == 0.5
    assert rows[2]["loss"] == 1.0 / 3  # full precision: resumed and uninterrupted logs compare
    Reporter(tmp_path, logs, progress=False).close()  # a fresh run starts the log anew
    assert read_log(tmp_path / "train_log.csv") == []


def test_a_silent_reporter_writes_nothing(tmp_path, capsys):
    rep = Reporter(tmp_path, {"train": "t.csv"}, total=2, active=False)
    rep.log("train", {"step": 1})
    rep.advance({"loss": "1"})
    rep.say("step 1: hello")
    rep.close()
    rep.summary("last validation")
    assert not (tmp_path / "t.csv").exists() and capsys.readouterr().out == ""
