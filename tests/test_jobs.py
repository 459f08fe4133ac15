"""The reproduction's evaluations as jobs (icmlib.evaluation.jobs): the same entries in
worker processes as in this one, failures handed back in their place, results cached."""
import pytest
import torch

from icmlib import evaluation as ev
from icmlib.codec import ICMCodec
from icmlib.evaluation import JPEG, LearnedCodec, jobs
from icmlib.presets import get_preset

PRESET = get_preset("ci")
TIMINGS = ("encode_s", "decode_s")


class FailingCodec(JPEG):
    """An installed tool that fails while encoding (module level: workers unpickle it)."""

    name = "failing"

    def _encode(self, image, quality):
        raise RuntimeError("the encoder crashed")


@pytest.fixture(scope="module")
def world():
    from icmlib.data import dataset_for
    from icmlib.tasks import build_task_network, freeze_batchnorm

    torch.manual_seed(0)
    network = freeze_batchnorm(build_task_network("detection", PRESET)).eval()
    codec_net = ICMCodec(8, 8, 0).eval()
    codec_net.update(force=True)
    dataset = ev.subset(dataset_for(PRESET, split="test"), 3)
    return dataset, {"detection": network}, codec_net


def _jobs(world):
    dataset, networks, codec_net = world
    out = []
    for codec, nets in ((JPEG(), None), (LearnedCodec([codec_net], "tiny"), {0: codec_net}),
                        (FailingCodec(), None)):
        settings = [0] if nets else [20, 60]
        key = ev.evaluation_key({"test": codec.name}, dataset, networks, settings)
        out.append(jobs.Job(codec.name, key, codec, settings, ("detection",),
                            {"kind": "learned" if nets else "anchor"}, bit_share_nets=nets))
    return out


def _without_timings(entry):
    return [{k: v for k, v in p.items() if k not in TIMINGS} for p in entry["points"]]


def test_workers_give_the_same_entries_and_hand_failures_back(world, tmp_path, monkeypatch,
                                                              one_thread):
    dataset, networks, _ = world
    monkeypatch.setenv("ICM_CACHE", str(tmp_path / "here"))
    here = jobs.run_jobs(_jobs(world), PRESET, dataset, networks, workers=1, progress=False)
    monkeypatch.setenv("ICM_CACHE", str(tmp_path / "there"))  # nothing cached for the pool
    there = jobs.run_jobs(_jobs(world), PRESET, dataset, networks, workers=2, progress=False)
    for a, b in zip(here[:2], there[:2]):
        assert a["name"] == b["name"] and _without_timings(a) == _without_timings(b)
    assert all(0 <= p["object_bit_share"] <= 1 for p in here[1]["points"])
    assert "object_bit_share" not in here[0]["points"][0]  # anchors have no bit maps
    for failed in (here[2], there[2]):
        assert isinstance(failed, RuntimeError) and "crashed" in str(failed)


def test_finished_jobs_are_cached_and_not_evaluated_again(world, tmp_path, monkeypatch):
    dataset, networks, _ = world
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    first = jobs.run_jobs(_jobs(world)[:2], PRESET, dataset, networks, workers=1,
                          progress=False)

    def fail(*args, **kwargs):
        raise AssertionError("a cached job was evaluated again")

    monkeypatch.setattr(ev.evaluate, "evaluate_codec", fail)
    again = jobs.run_jobs(_jobs(world)[:2], PRESET, dataset, networks, workers=2,
                          progress=False)
    assert [_without_timings(e) for e in again] == [_without_timings(e) for e in first]


def test_longest_jobs_start_first_and_workers_follow_the_device(monkeypatch):
    job = jobs.Job("vvc", {}, type("C", (), {"name": "vvc"})(), [1, 2], ("detection",))
    short = jobs.Job("jpeg", {}, JPEG(), [1, 2], ("detection",))
    assert job.expected_seconds(10) > short.expected_seconds(10) > 0
    assert jobs.default_workers(PRESET) >= 1
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert jobs.default_workers(get_preset("ci", device="cuda")) == 1
