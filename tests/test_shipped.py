"""Shipped checkpoints: load with sha256 verification, refuse a bad file and retrain, never
use one silently; ICM_RETRAIN ignores them; the committed set verifies."""
import json

import pytest
import torch

from icmlib import ship, shipped
from icmlib.cache import checkpoint_path, config_key, train_or_load
from icmlib.codec import decode_image, encode_image
from icmlib.presets import get_preset
from icmlib.training import codec_config, codec_for, codec_run

pytestmark = pytest.mark.usefixtures("one_thread")


def ci():
    return get_preset("ci", codec_steps=3, codec_base_rate=0, checkpoint_every=3, val_every=3)


@pytest.fixture
def shipped_set(tmp_path, monkeypatch):
    """A codec trained in one cache and shipped into a folder of its own; the test then
    runs with a fresh, empty cache, as a reader's machine would."""
    monkeypatch.setenv("ICM_CACHE", str(tmp_path / "trainer"))
    monkeypatch.setenv("ICM_SHIPPED_DIR", str(tmp_path / "shipped"))
    monkeypatch.delenv(shipped.RETRAIN_ENV, raising=False)
    p = ci()
    ckpt = codec_run(p, progress=False)
    entry = ship.ship("codec", codec_config(p), ckpt, command="test", trained_at="abc",
                         steps=3, wall_seconds=1.0)
    monkeypatch.setenv("ICM_CACHE", str(tmp_path / "reader"))
    return p, ckpt, entry, tmp_path / "shipped"


def test_compact_form_is_half_precision_without_cdf_tables(shipped_set):
    p, ckpt, entry, folder = shipped_set
    saved = torch.load(folder / entry["file"], weights_only=False)
    assert all(v.dtype != torch.float32 for v in saved["state_dict"].values())
    assert not any("_quantized_cdf" in k for k in saved["state_dict"])
    assert entry["bytes"] < 0.6 * sum(v.numel() * v.element_size()
                                      for v in ckpt["state_dict"].values())
    assert entry["sha256"] == shipped.sha256_of(folder / entry["file"])
    assert entry["trained_at"] == "abc" and entry["config"]["steps"] == 3


def test_reader_loads_the_shipped_codec_and_codes_with_it(shipped_set, capsys):
    p, ckpt, entry, folder = shipped_set
    net = codec_for(p, progress=True)
    assert "shipped checkpoints (sha256 verified)" in capsys.readouterr().out
    for k, v in ckpt["state_dict"].items():  # the trained weights, rounded to float16
        if v.dtype == torch.float32 and v.numel() > 1 and "cdf" not in k and "scale_table" not in k:
            assert torch.equal(net.state_dict()[k], v.half().float()), k
    # constants float16 cannot hold (the likelihood bound 1e-9) are the codec's own again
    bound = net.state_dict()["gaussian_conditional.likelihood_lower_bound.bound"]
    assert float(bound) == pytest.approx(1e-9)
    x = torch.rand(1, 3, 64, 64)
    out = net(x)
    assert torch.isfinite(-torch.log2(out["likelihoods"]["y"])).all()
    enc = encode_image(net, x)
    assert decode_image(net, enc["strings"], enc["shape"], enc["size"]).shape == x.shape
    assert not any((shipped_set[3].parent / "reader").glob("checkpoints/codec/*.pt"))


def test_corrupted_file_is_refused_and_retrained(shipped_set, capsys):
    p, ckpt, entry, folder = shipped_set
    path = folder / entry["file"]
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))
    net = codec_for(p, progress=True)
    out = capsys.readouterr().out
    assert "refusing the shipped codec checkpoint" in out and "sha256" in out
    assert "training codec" in out and net.meta["strategy"] == "mse"


def test_mismatching_configuration_is_refused(shipped_set, capsys):
    p, ckpt, entry, folder = shipped_set
    manifest = json.loads((folder / "manifest.json").read_text())
    name = f"codec/{entry['key']}"
    manifest["entries"][name]["config"]["lr"] = 123.0
    (folder / "manifest.json").write_text(json.dumps(manifest))
    assert shipped.load_shipped("codec", codec_config(p)) is None
    assert "another configuration" in capsys.readouterr().out


def test_retrain_ignores_the_shipped_set(shipped_set, monkeypatch, capsys):
    p, *_ = shipped_set
    monkeypatch.setenv(shipped.RETRAIN_ENV, "1")
    codec_for(p, progress=True)
    out = capsys.readouterr().out
    assert "shipped" not in out and "training codec" in out


def test_any_kind_ships_and_unchanged_weights_are_not_rewritten(tmp_path, monkeypatch):
    monkeypatch.setenv("ICM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv(shipped.RETRAIN_ENV, raising=False)
    folder = tmp_path / "set"
    monkeypatch.setenv("ICM_SHIPPED_DIR", str(folder))
    config = {"task": "toy", "steps": 1}
    obj = {"state_dict": {"w": torch.randn(4, 4), "n": torch.tensor(3)}, "metrics": {"a": 1}}
    e1 = ship.ship("task-toy", config, obj, command="t", trained_at="x")
    mtime = (folder / e1["file"]).stat().st_mtime_ns
    e2 = ship.ship("task-toy", config, obj, command="t", trained_at="later")
    assert e1["sha256"] == e2["sha256"] and (folder / e1["file"]).stat().st_mtime_ns == mtime
    assert e2 == e1 and shipped.read_manifest(folder)["entries"]["task-toy/" + e1["key"]] == e1
    loaded = train_or_load("task-toy", config, lambda: pytest.fail("must not train"))
    assert loaded["state_dict"]["w"].dtype == torch.float32
    assert torch.equal(loaded["state_dict"]["w"], obj["state_dict"]["w"].half().float())
    assert loaded["metrics"] == {"a": 1} and config_key(config) == e1["key"]
    summary = shipped.shipped_summary(folder)
    assert summary["files"] == 1 and summary["megabytes"] > 0
    # taken out again: file and entry gone
    assert ship.unship("task-toy", e1["key"]) == e1 and not (folder / e1["file"]).exists()
    assert shipped.shipped_summary(folder)["files"] == 0
    assert ship.unship("task-toy", e1["key"]) is None


def test_the_committed_shipped_set_verifies(monkeypatch):
    """Every file of the set the project ships has the sha256 its manifest records."""
    monkeypatch.delenv("ICM_SHIPPED_DIR", raising=False)
    manifest = shipped.read_manifest(shipped.SHIPPED_DIR)
    for name, entry in manifest["entries"].items():
        path = shipped.SHIPPED_DIR / entry["file"]
        assert path.is_file(), f"{name}: {entry['file']} is listed but missing"
        assert shipped.sha256_of(path) == entry["sha256"], f"{name}: sha256 mismatch"
        assert entry["config"] and entry["command"] and entry["trained_at"]
    total = sum(e["bytes"] for e in manifest["entries"].values())
    # 19 codecs (~5 MB each: 7 variable-rate ones, 7 for the low rate points, the MSE
    # baseline's four finished on whole images, s4's), the task networks and the
    # chapters' segmenters (~1 MB each), so that `make book` and `icm reproduce` evaluate
    # instead of training for hours: keep it under 120 MB
    assert total < 120e6, f"the shipped set is {total / 1e6:.1f} MB (keep it under 120 MB)"


def test_ship_from_cache_ships_what_is_trained_and_lists_the_rest(tmp_path, monkeypatch):
    monkeypatch.setenv("ICM_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("ICM_SHIPPED_DIR", str(tmp_path / "set"))
    monkeypatch.delenv(shipped.RETRAIN_ENV, raising=False)
    p = get_preset("ci", variable_rate=True, codec_steps=3, codec_finetune_steps=2,
                   codec_base_rate=0, checkpoint_every=3, val_every=3)
    codec_run(p, None, "mse", 0, progress=False)  # the variable-rate MSE codec (and its base)
    status = {kind + ("" if kind != "codec" else f"/{key}"): s
              for kind, key, s in ship.ship_from_cache(p, trained_at="abc")}
    mse_key = config_key(codec_config(p, None, "mse", 0))
    assert status[f"codec/{mse_key}"].startswith("shipped")
    assert status["task-detection"] == "not trained yet"
    assert sum(s.startswith("shipped") for s in status.values()) == 1
    entry = shipped.read_manifest()["entries"][f"codec/{mse_key}"]
    assert entry["steps"] == 2 and entry["wall_seconds"] > 0 and entry["trained_at"] == "abc"


def test_ship_cached_ships_the_books_networks_by_their_stored_configuration(tmp_path, monkeypatch):
    """`python -m icmlib.ship --book`: what the chapters trained (segmenters here) ships under
    the key its stored configuration hashes to; a file whose configuration was edited is not."""
    monkeypatch.setenv("ICM_CACHE", str(tmp_path / "cache"))
    folder = tmp_path / "set"
    monkeypatch.setenv("ICM_SHIPPED_DIR", str(folder))
    monkeypatch.delenv(shipped.RETRAIN_ENV, raising=False)
    net = {"state_dict": {"w": torch.randn(3, 3)}, "train_seconds": 12.5, "steps_run": 30,
           "val": {"miou": 0.5}}
    good = {"kind": "unet", "steps": 30, "width": 8}
    edited = {"kind": "fcn", "steps": 30, "width": 8}
    train_or_load("segmenter", good, lambda: net)
    train_or_load("segmenter", edited, lambda: net)
    meta = checkpoint_path("segmenter", edited).with_suffix(".json")
    meta.write_text(meta.read_text().replace('"fcn"', '"dilated"'))
    done = {key: status for _, key, status in
            ship.ship_cached("segmenter", "abc1234", preset_name="cpu")}
    assert done[config_key(good)].startswith("shipped")
    assert done[config_key(edited)].startswith("skipped")
    entry = shipped.read_manifest(folder)["entries"][f"segmenter/{config_key(good)}"]
    assert entry["steps"] == 30 and entry["wall_seconds"] == 12.5 and entry["trained_at"] == "abc1234"
    (tmp_path / "cache").rename(tmp_path / "old-cache")  # a fresh clone: nothing cached
    loaded = train_or_load("segmenter", good, lambda: pytest.fail("must load the shipped one"))
    assert torch.equal(loaded["state_dict"]["w"], net["state_dict"]["w"].half().float())


def test_compact_keeps_single_numbers_of_other_networks_in_float32():
    """Without an expander (segmenters, s5's CompressAI codecs) a constant such as a
    likelihood bound of 1e-9 must survive shipping: float16 would make it 0."""
    obj = {"state_dict": {"w": torch.randn(3, 3), "bound": torch.tensor([1e-9]),
                          "steps": torch.tensor(7)}}
    small = ship.compact(obj)["state_dict"]
    assert small["w"].dtype == torch.float16 and small["steps"].dtype == torch.int64
    assert small["bound"].dtype == torch.float32 and float(small["bound"]) == pytest.approx(1e-9)


def test_a_retrain_is_staged_beside_the_shipped_set_then_promoted(tmp_path, monkeypatch, capsys):
    """`python -m icmlib.ship --replace F=V --into DIR`, then `--promote DIR`: a new recipe's
    checkpoints wait in a folder of their own (the shipped set keeps serving the book), and
    replace the old recipe's only when the reproduction lacks none of them."""
    monkeypatch.setenv("ICM_CACHE", str(tmp_path / "cache"))
    folder, staged = tmp_path / "set", tmp_path / "next"
    monkeypatch.setenv("ICM_SHIPPED_DIR", str(folder))
    monkeypatch.delenv(shipped.RETRAIN_ENV, raising=False)
    old = get_preset("ci", variable_rate=True, codec_steps=3, codec_finetune_steps=2,
                     codec_base_rate=0, checkpoint_every=3, val_every=3)
    codec_run(old, None, "mse", 0, progress=False)
    ship.ship_from_cache(old, trained_at="old")
    old_icm = ship.ship("codec", {"task": "detection", "steps": 1}, {"w": torch.ones(2)},
                        command="t", trained_at="old")  # an ICM codec of the old recipe
    assert ship.main(["--preset", "ci", "--replace", "icm_steps=7", "--into", str(staged),
                      "--trained-at", "new"]) == 0
    assert not list(staged.glob("*.pt"))  # nothing of that recipe is trained
    new = old.replace(codec_finetune_steps=3)
    codec_run(new, None, "mse", 0, progress=False)
    status = {key: s for _, key, s in ship.ship_from_cache(new, "new", directory=staged,
                                                            skip_shipped=True)}
    new_key = config_key(codec_config(new, None, "mse", 0))
    assert status[new_key].startswith("shipped") and new_key not in shipped.read_manifest()["entries"]
    assert shipped.read_manifest(staged)["entries"][f"codec/{new_key}"]["trained_at"] == "new"
    assert ship.main(["--preset", "ci", "--promote", str(staged)]) == 1
    assert "still lacks" in capsys.readouterr().err and (staged / f"codec-{new_key}.pt").is_file()
    with pytest.raises(ValueError, match="still lacks .*task-detection"):
        ship.promote(staged, new)  # the reproduction lacks its task networks: nothing moves
    assert (staged / f"codec-{new_key}.pt").is_file()
    monkeypatch.setattr(ship, "reproduction_checkpoints", lambda preset: [])
    with pytest.raises(ValueError, match="does not load .*take the new recipe"):
        ship.promote(staged, old)  # promoted, the staged codec would be taken out at once
    wanted = [("codec", codec_config(new, None, "mse", 0))]
    monkeypatch.setattr(ship, "reproduction_checkpoints", lambda preset: wanted)
    staged_file = staged / f"codec-{new_key}.pt"
    good = staged_file.read_bytes()
    staged_file.write_bytes(good[:-1] + bytes([good[-1] ^ 1]))
    with pytest.raises(ValueError, match="sha256"):
        ship.promote(staged, new)
    staged_file.write_bytes(good)
    done = {key: s for _, key, s in ship.promote(staged, new)}
    assert done[new_key].startswith("promoted") and done[old_icm["key"]].startswith("taken out")
    entries = shipped.read_manifest()["entries"]
    assert f"codec/{new_key}" in entries and f"codec/{old_icm['key']}" not in entries
    assert not (folder / old_icm["file"]).exists() and not list(staged.iterdir())
    old_key = config_key(codec_config(old, None, "mse", 0))
    assert f"codec/{old_key}" in entries  # the MSE baseline is no ICM codec: kept
    monkeypatch.setenv("ICM_CACHE", str(tmp_path / "reader"))  # a fresh clone
    loaded = codec_run(new, None, "mse", 0, progress=False)
    assert loaded["meta"]["steps"] == 3 and loaded["meta"]["train_seconds"] > 0


def test_ship_refuses_a_malformed_replace(capsys):
    with pytest.raises(SystemExit):
        ship.main(["--replace", "icm_steps", "--trained-at", "x"])
    assert "FIELD=VALUE" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ship.main(["--replace", "no_such_field=3", "--trained-at", "x"])
    assert "unknown preset field" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        ship.main(["--replace", "icm_steps=6000", "--promote", "somewhere"])
    assert "presets.py" in capsys.readouterr().err


def test_a_codec_key_holds_only_what_its_training_reads():
    """An ICM setting tried through the preset keeps the MSE codecs (and the baseline) it
    starts from; a strategy's own setting keeps the other strategies' codecs."""
    from icmlib.training import baseline_config

    p = get_preset("ci", mse_finish_steps=5)
    icm = p.replace(icm_task_weight=7.0, icm_mse_weight=0.5, icm_crop_size=32)
    for rate in ("all", 0):
        assert codec_config(icm, None, "mse", rate) == codec_config(p, None, "mse", rate)
        assert codec_config(icm, "detection", "fixed", rate) != codec_config(p, "detection", "fixed", rate)
    # the baseline's last stage trains on the ICM codecs' crops: those enter its key
    assert baseline_config(icm.replace(icm_crop_size=p.icm_crop_size), "all") == baseline_config(p, "all")
    assert baseline_config(icm, "all") != baseline_config(p, "all")
    ramp = p.replace(weighting_ramp_end=0.9)
    assert codec_config(ramp, "detection", "fixed") == codec_config(p, "detection", "fixed")
    assert codec_config(ramp, "detection", "auto") == codec_config(p, "detection", "auto")
    assert codec_config(ramp, "detection", "dynamic") != codec_config(p, "detection", "dynamic")


def test_rekey_finds_a_codec_shipped_under_an_old_key_again(shipped_set, capsys):
    """A codec shipped when its key held every ICM setting is renamed to today's key,
    bytes unchanged, and the reader loads it instead of training."""
    p, ckpt, entry, folder = shipped_set
    old_config = dict(entry["config"], icm_task_weight=100.0, auto_momentum=0.9)
    old = ship.ship("codec", old_config, ckpt, command="test", trained_at="abc", steps=3,
                    wall_seconds=1.0)
    ship.unship("codec", entry["key"])
    assert shipped.load_shipped("codec", codec_config(p), verbose=False) is None
    assert ship.rekey() == [("codec", entry["key"], f"was {old['key']}")]
    moved = shipped.read_manifest()["entries"][f"codec/{entry['key']}"]
    assert moved["sha256"] == old["sha256"] and moved["config"] == entry["config"]
    assert not (folder / old["file"]).exists() and ship.rekey() == []
    codec_for(p, progress=True)
    assert "shipped checkpoints (sha256 verified)" in capsys.readouterr().out


def test_rekey_refuses_two_codecs_that_become_one(shipped_set):
    p, ckpt, entry, folder = shipped_set
    ship.ship("codec", dict(entry["config"], icm_mse_weight=0.1), ckpt, command="test",
              trained_at="abc", steps=3, wall_seconds=1.0)
    before = (folder / "manifest.json").read_text()
    with pytest.raises(ValueError, match="same key"):
        ship.rekey()
    assert (folder / "manifest.json").read_text() == before
