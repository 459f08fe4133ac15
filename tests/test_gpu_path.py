"""The ``gpu`` preset's path on the CPU, with stand-ins for everything it downloads.

The ``gpu`` preset takes its MSE codecs from CompressAI's zoo (``codec_zoo``), fine-tunes
ICM codecs from them with a COCO-pretrained torchvision detector, and evaluates on COCO
val2017. Here the zoo weights are zoo-shaped random ones and the detector a random
torchvision-shaped Faster R-CNN, both saved where torch's hub cache keeps the downloads
(so they load through the same code as the real ones), COCO is the synthetic world in COCO
2017's layout, and ``$ICM_OFFLINE=1`` forbids every download. Tiny overrides (CPU, a few
steps, a few images) make it run in a test.
"""
import math
from pathlib import Path

import pytest
import torch
from compressai.zoo import image as zoo_image

from icmlib.codec import ICMCodec, ModelError, load_codec, zoo_weights
from icmlib.codec.zoo import ZOO_LAMBDAS, zoo_architecture
from icmlib.data import export_coco_layout
from icmlib.presets import PRESETS, get_preset
from icmlib.training import (CHECKPOINT_NAME, codec_config, codec_for, codec_parent, codec_run,
                             default_steps, train_codec)
from test_coco2017_standin import save_random_detector  # the same stand-in detector
from test_zoo_model import refusing_url, save_zoo_shaped  # the same zoo stand-ins

N = 3  # images per split of the stand-in


def tiny_gpu(**more):
    """The gpu preset, shrunk to seconds on a CPU: everything else is the gpu preset's."""
    return get_preset("gpu", device="cpu", num_workers=0, rd_lambdas=ZOO_LAMBDAS[:2],
                      crop_size=64, batch_size=2, icm_steps=2, checkpoint_every=1,
                      icm_val_every=2, train_val_images=1, log_every=1, task_image_size=96,
                      repro_eval_images=2, train_threads=1, **more)


@pytest.fixture(scope="module")
def standin(tmp_path_factory):
    """A COCO 2017 layout, a hub cache with zoo-shaped qualities 1 and 2, an own cache, offline."""
    root = tmp_path_factory.mktemp("gpu-path")
    export_coco_layout(root / "coco", "ci", num_images=N)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(torch.hub, "_hub_dir", str(root / "hub"))
        mp.setenv("ICM_COCO_ROOT", str(root / "coco"))
        mp.setenv("ICM_CACHE", str(root / "cache"))
        mp.setenv("ICM_OFFLINE", "1")  # nothing may be downloaded
        zoo = {q: save_zoo_shaped("mbt2018-mean", q, seed=q) for q in (1, 2)}
        yield root, zoo


def test_the_gpu_preset_starts_from_the_zoo_at_its_training_lambdas():
    gpu = PRESETS["gpu"]
    assert gpu.codec_zoo == "mbt2018-mean" and gpu.codec_transforms == "gdn"
    assert not gpu.variable_rate and 0 < gpu.repro_eval_images < 5000
    # rate point i is quality i + 1, at the λ it was trained with, in its architecture
    assert gpu.rd_lambdas == ZOO_LAMBDAS[:len(gpu.rd_lambdas)]
    for quality in range(1, len(gpu.rd_lambdas) + 1):
        assert zoo_architecture("mbt2018-mean", quality) == (gpu.codec_channels,
                                                              gpu.latent_channels)
    cfg = codec_config(gpu, None, "mse", 2)
    assert (cfg["codec_zoo"], cfg["zoo_quality"], cfg["steps"]) == ("mbt2018-mean", 3, 0)
    assert cfg["zoo_file"] == zoo_weights("mbt2018-mean", 3)[0].rsplit("/", 1)[1]
    assert codec_parent(gpu, None, 2) is None and default_steps(gpu, None, None) == 0
    icm = codec_config(gpu, "detection", "dynamic", 2)
    assert icm["init_from"] == cfg and icm["steps"] == gpu.icm_steps
    # presets without a zoo keep their keys: no zoo field enters them
    assert "codec_zoo" not in codec_config("ci", None, "mse", 0)
    assert "codec_zoo" not in codec_config("ci", "detection", "fixed", 0)["init_from"]


def test_zoo_settings_that_cannot_work_are_named():
    with pytest.raises(ValueError, match="codec_transforms='gdn'"):
        codec_config(get_preset("gpu", codec_transforms="residual"), None, "mse", 0)
    with pytest.raises(ValueError, match="only"):
        codec_config(get_preset("gpu", codec_zoo="bmshj2018-hyperprior"), None, "mse", 0)
    with pytest.raises(ModelError, match="no CompressAI zoo codec was trained with"):
        codec_config("gpu", None, "mse", 0.004)
    with pytest.raises(ValueError, match="N=192, M=320"):  # quality 5 is a larger network
        codec_config("gpu", None, "mse", ZOO_LAMBDAS[4])
    with pytest.raises(ValueError, match="trains no MSE codec"):
        train_codec("gpu", None, "mse", 0)


def test_the_mse_codec_is_the_zoo_codec_stored_as_ours(standin):
    _, zoo = standin
    preset = tiny_gpu()
    ckpt = codec_run(preset, None, "mse", 1, progress=False)
    assert ckpt["meta"]["zoo_quality"] == 2 and ckpt["meta"]["steps"] == 0
    net = load_codec(ckpt)  # an ordinary icmlib codec checkpoint
    assert isinstance(net, ICMCodec) and net.config["transforms"] == "gdn"
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.allclose(net(x)["x_hat"], zoo[2](x)["x_hat"], atol=1e-5)
    again = codec_run(preset, None, "mse", 1, progress=False)  # from the cache now
    assert all(torch.equal(again["state_dict"][k], v) for k, v in ckpt["state_dict"].items())


def test_a_missing_zoo_file_says_what_to_download_and_where(standin, monkeypatch, capsys):
    url, file = zoo_weights("mbt2018-mean", 3)
    preset = get_preset("gpu", rd_lambdas=ZOO_LAMBDAS[2:3])
    with pytest.raises(ModelError) as e:
        codec_for(preset, None, "mse", 0, progress=False)
    message = str(e.value)
    assert len(message.splitlines()) == 1 and "downloads are off" in message
    assert f"download {url} and put it at {file}" in message
    # online, a download that fails says so, and the same what-to-do
    url = refusing_url("mbt2018-mean", 3)
    monkeypatch.setitem(zoo_image.model_urls["mbt2018-mean"]["mse"], 3, url)
    monkeypatch.setenv("ICM_OFFLINE", "0")
    with pytest.raises(ModelError, match="download failed") as e:
        codec_for(preset, None, "mse", 0, progress=False)
    assert len(str(e.value).splitlines()) == 1 and f"download {url} and put it at" in str(e.value)
    assert not file.exists()


@pytest.mark.slow
def test_the_gpu_path_end_to_end_on_the_stand_ins(standin, one_thread):
    """zoo MSE codec → ICM fine-tuning with the frozen detector → COCO evaluation on val2017
    (real bytes, pycocotools mAP), as ``icm reproduce --preset gpu`` runs it."""
    from icmlib.evaluation import evaluate_codec, learned_codec, reference_accuracy
    from icmlib.evaluation.reproduction import train_codecs
    from icmlib.evaluation.results import icm_name, mse_name
    from icmlib.training import codec_at_rate

    root, _ = standin
    save_random_detector(root / "hub")
    preset = tiny_gpu()
    codecs = train_codecs(preset, tasks=("detection",), strategies=("dynamic",), progress=False)
    mse, icm = codecs[mse_name()], codecs[icm_name("detection", "dynamic")]
    assert sorted(mse) == sorted(icm) == [0, 1]
    for point, ckpt in icm.items():
        assert (Path(ckpt["run_dir"]) / CHECKPOINT_NAME).is_file()  # resumable
        rows = ckpt["logs"]["train"]
        assert len(rows) == preset.icm_steps and ckpt["logs"]["val"]
        assert all(math.isfinite(r["loss"]) and math.isfinite(r["task"]) for r in rows)
        assert any(r["w_task"] > 0 for r in rows)  # the detector's loss took part
        start = mse[point]["state_dict"]
        changed = [k for k, v in ckpt["state_dict"].items()
                   if v.is_floating_point() and not k.startswith("gaussian_conditional")
                   and not torch.equal(v, start[k])]
        assert any(k.startswith("g_a.") for k in changed)  # fine-tuned, not a copy
    # evaluation on the stand-in's val2017, as the reproduction does it
    reference = reference_accuracy(("detection",), preset=preset, num_images=2)
    assert {"bbox_map", "bbox_map50"} <= set(reference)
    nets = [codec_at_rate(icm[p], 0) for p in sorted(icm)]
    entry = evaluate_codec(learned_codec(nets, "ICM (stand-in)", preset), preset=preset,
                           tasks=("detection",), num_images=preset.repro_eval_images,
                           progress=False)
    assert len(entry["points"]) == 2
    for point in entry["points"]:
        assert point["bpp"] > 0 and 0 <= point["bbox_map"] <= 1 and "psnr" in point
