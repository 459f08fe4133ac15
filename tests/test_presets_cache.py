import pytest
import torch

from icmlib import cache
from icmlib.presets import PRESETS, get_preset


def test_preset_from_environment(monkeypatch):
    monkeypatch.setenv("ICM_PRESET", "ci")
    assert get_preset().name == "ci"
    monkeypatch.setenv("ICM_PRESET", "nope")
    with pytest.raises(ValueError, match="unknown preset 'nope'"):
        get_preset()


def test_default_preset_follows_hardware(monkeypatch):
    monkeypatch.delenv("ICM_PRESET", raising=False)
    assert get_preset().name == ("gpu" if torch.cuda.is_available() else "cpu")


def test_overrides_and_unknown_fields():
    original = PRESETS["ci"].batch_size
    p = get_preset("ci", batch_size=original + 1)
    assert p.batch_size == original + 1 and p.name == "ci"
    assert PRESETS["ci"].batch_size == original  # the named preset itself is untouched
    with pytest.raises(ValueError, match="unknown preset field"):
        get_preset("ci", not_a_field=1)


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_every_preset_holds_what_the_code_relies_on(name):
    """Not the table restated, but what breaks when it is edited carelessly: rate points
    ordered from low to high rate (curves, BD-rate), a base rate that exists (the recipe),
    a synthetic world with room for a batch, a crop the world's images can give."""
    from icmlib.training import codec_parent

    p = PRESETS[name]
    assert list(p.rd_lambdas) == sorted(set(p.rd_lambdas)), p.rd_lambdas
    assert p.codec_base_rate == -1 or 0 <= p.codec_base_rate < len(p.rd_lambdas)
    for rate in range(len(p.rd_lambdas)):
        codec_parent(p, None, rate)  # raises on a recipe that names a missing rate point
    if p.dataset == "synthetic":
        assert p.train_images >= max(p.batch_size, p.icm_batch_size, p.task_batch_size)
        assert p.image_size >= max(p.crop_size, p.icm_crop_size)
    else:
        assert p.dataset == "coco"


def test_train_or_load_trains_once_per_config(tmp_path, monkeypatch):
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    calls = []

    def train():
        calls.append(1)
        return {"value": len(calls)}

    assert cache.train_or_load("thing", {"a": 1}, train, verbose=False) == {"value": 1}
    assert cache.train_or_load("thing", {"a": 1}, train, verbose=False) == {"value": 1}
    assert cache.train_or_load("thing", {"a": 2}, train, verbose=False) == {"value": 2}
    assert cache.train_or_load("thing", {"a": 1}, train, force=True, verbose=False) == {"value": 3}
    assert len(calls) == 3
    assert cache.checkpoint_path("thing", {"a": 1}).with_suffix(".json").exists()


def test_messages_show_cache_paths_relative_to_the_cache(tmp_path, monkeypatch, capsys):
    """The book's pages print where checkpoints are, not the build machine's folders."""
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    cache.train_or_load("thing", {"a": 1}, lambda: {"v": 1})
    cache.train_or_load("thing", {"a": 1}, lambda: {"v": 1})
    out = capsys.readouterr().out
    assert "$ICM_CACHE/checkpoints/thing/" in out and str(tmp_path) not in out
    assert cache.shown_path(tmp_path.parent / "elsewhere.pt") == str(tmp_path.parent / "elsewhere.pt")


def test_loaded_from_cache_is_said_once_per_checkpoint(tmp_path, monkeypatch, capsys):
    """A chapter loads the same checkpoint many times: the reader is told once per process."""
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    monkeypatch.setenv("ICM_SHIPPED_DIR", str(tmp_path / "no-shipped-set"))
    cache.train_or_load("thing", {"a": 1}, lambda: {"v": 1})
    for _ in range(3):
        cache.train_or_load("thing", {"a": 1}, lambda: {"v": 1})
        cache.train_or_load("thing", {"a": 2}, lambda: {"v": 2})
    out = capsys.readouterr().out.splitlines()
    assert sum("training thing" in line for line in out) == 2
    assert sum("loaded thing from cache" in line for line in out) == 2  # {"a": 1} and {"a": 2}, once each
    monkeypatch.setenv("ICM_CACHE", str(tmp_path / "other"))  # another cache: other checkpoints
    cache.train_or_load("thing", {"a": 1}, lambda: {"v": 1})
    cache.train_or_load("thing", {"a": 1}, lambda: {"v": 1})
    assert "loaded thing from cache" in capsys.readouterr().out


def test_atomic_save_leaves_no_partial_file(tmp_path):
    class Boom:
        def __reduce__(self):
            raise RuntimeError("boom")

    target = tmp_path / "x.pt"
    with pytest.raises(RuntimeError):
        cache.atomic_save({"bad": Boom()}, target)
    assert not target.exists() and list(tmp_path.iterdir()) == []
