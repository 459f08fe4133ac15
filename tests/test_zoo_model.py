"""``icm --model zoo:NAME:QUALITY``: CompressAI's pretrained codecs, without the internet.

The weights are zoo-shaped (CompressAI's architecture at that quality) but randomly
initialised, saved by the test where torch's hub cache expects the download, and loaded
through the same code as the real ones. Offline, the error is one line naming the URL and
the file to put in place.
"""
import socket

import numpy as np
import pytest
import torch
from compressai.zoo import image as zoo_image
from compressai.zoo import image_models
from PIL import Image

from icmlib.cli import main
from icmlib.codec import (ZOO_MODELS, describe_codec, fingerprint, read_icm, resolve_codec,
                          zoo_weights)


def icm(*args):
    return main([str(a) for a in args])


def save_zoo_shaped(name, quality, seed):
    """Random-init weights of ``name`` at ``quality`` where the download would go; the
    model itself (its state dict is what the file holds)."""
    torch.manual_seed(seed)
    net = image_models[name](quality=quality, pretrained=False).eval()
    net.update(force=True)
    path = zoo_weights(name, quality)[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(net.state_dict(), path)
    return net


@pytest.fixture
def hub(tmp_path, monkeypatch):
    """torch's hub cache in a temporary folder, holding zoo-shaped weights."""
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.delenv("ICM_OFFLINE", raising=False)
    nets = {("mbt2018-mean", 3): save_zoo_shaped("mbt2018-mean", 3, 0),
            ("mbt2018-mean", 4): save_zoo_shaped("mbt2018-mean", 4, 1),
            ("bmshj2018-hyperprior", 2): save_zoo_shaped("bmshj2018-hyperprior", 2, 2)}
    rng = np.random.default_rng(0)
    photo = (rng.random((37, 53, 3)) * 60 + np.linspace(60, 190, 53)[None, :, None])
    Image.fromarray(photo.astype(np.uint8)).save(tmp_path / "photo.png")
    return tmp_path, nets


@pytest.mark.parametrize("name,quality", [("mbt2018-mean", 3), ("bmshj2018-hyperprior", 2)])
def test_zoo_codec_encodes_and_decodes_and_says_what_it_is(hub, capsys, name, quality):
    d, nets = hub
    spec = f"zoo:{name}:{quality}"
    assert icm("encode", d / "photo.png", d / "z.icm", "--model", spec) == 0
    out = capsys.readouterr().out
    assert f"CompressAI zoo {name}, quality {quality}" in out and "Vimeo-90k" in out
    # the file names the weights the test put in the cache: those were loaded
    assert read_icm(d / "z.icm").fingerprint == fingerprint(nets[(name, quality)])
    assert icm("decode", d / "z.icm", d / "z.png", "--model", spec) == 0
    assert Image.open(d / "z.png").size == (53, 37)
    assert icm("info", d / "z.icm", "--model", spec) == 0
    assert "can decode this file" in capsys.readouterr().out


def test_decoding_with_another_model_is_refused(hub, capsys):
    d, _ = hub
    assert icm("encode", d / "photo.png", d / "z.icm", "--model", "zoo:mbt2018-mean:3") == 0
    capsys.readouterr()
    for other in (["--model", "zoo:mbt2018-mean:4"], []):  # another quality; the default
        assert icm("decode", d / "z.icm", d / "z.png", *other) == 2
        err = capsys.readouterr().err
        assert "written by model" in err and "Traceback" not in err
    assert not (d / "z.png").exists()


def test_the_default_codec_says_it_learned_the_synthetic_world(hub, capsys):
    d, _ = hub
    assert icm("encode", d / "photo.png", d / "default.icm") == 0
    out = capsys.readouterr().out
    assert "the default codec shipped with icmlib" in out and "synthetic world" in out
    assert "cpu" in describe_codec(resolve_codec(None))


def refusing_url(name, quality):
    """A URL on 127.0.0.1 where nothing listens: the connection is refused."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/{zoo_weights(name, quality)[1].name}"


def test_offline_one_line_says_what_to_download_and_where(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "hub"))
    monkeypatch.delenv("ICM_OFFLINE", raising=False)
    url = refusing_url("mbt2018-mean", 2)
    monkeypatch.setitem(zoo_image.model_urls["mbt2018-mean"]["mse"], 2, url)
    file = zoo_weights("mbt2018-mean", 2)[1]
    Image.new("RGB", (16, 16)).save(tmp_path / "photo.png")
    for offline in ("0", "1"):  # a download that fails; downloads switched off
        monkeypatch.setenv("ICM_OFFLINE", offline)
        assert icm("encode", tmp_path / "photo.png", tmp_path / "z.icm",
                   "--model", "zoo:mbt2018-mean:2") == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err, err
        assert f"download {url} and put it at {file}" in err
        assert ("download failed" in err) == (offline == "0"), err
    assert not file.exists() and not (tmp_path / "z.icm").exists()


@pytest.mark.parametrize("spec", ["zoo:mbt2018-mean", "zoo:nonesuch:3", "zoo:mbt2018-mean:9",
                                  "zoo:bmshj2018-factorized:1", "zoo:mbt2018-mean:x"])
def test_bad_zoo_names_list_the_choices(tmp_path, capsys, spec):
    Image.new("RGB", (16, 16)).save(tmp_path / "photo.png")
    assert icm("encode", tmp_path / "photo.png", tmp_path / "z.icm", "--model", spec) == 2
    err = capsys.readouterr().err
    assert "zoo:NAME:QUALITY" in err or all(m in err for m in ZOO_MODELS), err
    assert "Traceback" not in err


def test_gdn_transforms_hold_the_zoo_codec_weights():
    """ICMCodec(transforms="gdn") is CompressAI's mbt2018-mean under our name: the zoo's
    pretrained state dict loads into it key for key, and it reconstructs the same image, so
    the gpu preset can fine-tune the zoo codec with the project's training loop."""
    from icmlib.codec import ICMCodec
    from icmlib.training.recipe import run_config

    torch.manual_seed(0)
    zoo = image_models["mbt2018-mean"](quality=1, pretrained=False).eval()
    ours = ICMCodec(128, 192, transforms="gdn").eval()
    missing, unexpected = ours.load_state_dict(zoo.state_dict(), strict=False)
    assert not unexpected and all(k.startswith("gaussian_conditional") for k in missing)
    assert ours.config == {"N": 128, "M": 192, "blocks": 0, "transforms": "gdn"}
    assert "transforms" not in ICMCodec(64, 96).config  # residual codecs keep their fingerprints
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(ours(x)["x_hat"], zoo(x)["x_hat"], atol=1e-5)
    with pytest.raises(ValueError, match="transforms must be one of"):
        ICMCodec(transforms="vit")
    with pytest.raises(ValueError, match="need transforms='residual'"):
        ICMCodec(blocks=1, transforms="gdn")
    from icmlib.presets import get_preset
    gdn = get_preset("ci", codec_transforms="gdn")
    assert run_config(gdn, None, "mse", 0, 0.01, 1, 0, None)["codec_transforms"] == "gdn"
    assert "codec_transforms" not in run_config(get_preset("ci"), None, "mse", 0, 0.01, 1, 0, None)
