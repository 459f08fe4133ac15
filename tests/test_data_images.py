"""Tests of icmlib.data's image files (load_image, save_image) and pictures (blur_background,
draw_annotations, annotation_grid)."""
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import icmlib.data as data
from icmlib.data import CATEGORIES, CocoDataset, generate_world, load_image, save_image


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    """(image_dir, ann_file) of a small world: 12 images of 64 px, up to 4 objects."""
    return generate_world(tmp_path_factory.mktemp("world"), "train", 12, 64, 4, seed=3)



def test_load_image_converts_and_warns(tmp_path):
    rgb = np.random.default_rng(0).integers(0, 256, (7, 9, 3), dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        x = load_image(tmp_path / "rgb.png")
    assert x.shape == (3, 7, 9) and torch.equal((x * 255).round().byte().permute(1, 2, 0),
                                                torch.from_numpy(rgb))
    Image.fromarray(rgb[..., 0]).save(tmp_path / "gray.png")
    with pytest.warns(UserWarning, match="grayscale"):
        x = load_image(tmp_path / "gray.png")
    assert x.shape == (3, 7, 9) and torch.equal(x[0], x[2])
    rgba = np.concatenate([rgb, np.zeros((7, 9, 1), np.uint8)], 2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    with pytest.warns(UserWarning, match="RGBA"):
        x = load_image(tmp_path / "rgba.png")
    assert torch.equal(x, torch.ones(3, 7, 9)), "fully transparent pixels become white"
    Image.fromarray(rgb).convert("P").save(tmp_path / "pal.png")
    with pytest.warns(UserWarning, match="palette"):
        assert load_image(tmp_path / "pal.png").shape == (3, 7, 9)
    Image.fromarray((rgb[..., 0].astype(np.uint16) * 257)).save(tmp_path / "g16.png")
    with pytest.warns(UserWarning, match="8-bit"):
        x = load_image(tmp_path / "g16.png")
    assert torch.allclose(x[0] * 255, torch.from_numpy(rgb[..., 0]).float(), atol=0.51)


def test_load_image_errors(tmp_path):
    (tmp_path / "notes.png").write_text("this is not an image")
    with pytest.raises(ValueError, match="not an image"):
        load_image(tmp_path / "notes.png")
    (tmp_path / "empty.jpg").write_bytes(b"")
    with pytest.raises(ValueError, match="not an image"):
        load_image(tmp_path / "empty.jpg")
    with pytest.raises(FileNotFoundError):
        load_image(tmp_path / "missing.png")


def test_save_image_round_trip(tmp_path):
    x = torch.rand(3, 10, 13)
    path = save_image(x, tmp_path / "sub" / "x.png")
    with Image.open(path) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (13, 10)
    y = load_image(path)
    assert (y - x).abs().max() <= 0.5 / 255 + 1e-6
    save_image(x[None] * 2 - 0.5, tmp_path / "batch.png")  # [1,3,H,W], clamped
    assert load_image(tmp_path / "batch.png").shape == (3, 10, 13)
    with pytest.raises(ValueError, match="tensor"):
        save_image(torch.rand(2, 3, 4, 4), tmp_path / "bad.png")


# ---- pictures --------------------------------------------------------------------------
def test_blur_background_keeps_objects(world):
    image, target = CocoDataset(*world)[0]
    out = data.blur_background(image, target, sigma=2.0, margin=0)
    objects = target["semantic"] > 0
    assert torch.equal(out[:, objects], image[:, objects])
    assert (out[:, ~objects] - image[:, ~objects]).abs().mean() > 0.02


def test_draw_annotations(world):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ds = CocoDataset(*world)
    fig, ax = plt.subplots()
    image, target = ds[0]
    data.draw_annotations(ax, image, target, ds.categories)
    assert len(ax.patches) == len(target["boxes"])
    assert {t.get_text() for t in ax.texts} <= {c["name"] for c in CATEGORIES}
    shown = ax.images[0].get_array()
    inside = target["masks"].sum(0).bool().numpy()
    assert np.allclose(shown[~inside], image.permute(1, 2, 0).numpy()[~inside])
    assert not np.allclose(shown[inside], image.permute(1, 2, 0).numpy()[inside]), "masks tinted"
    plt.close(fig)
    # predictions: [K, 1, H, W] probabilities and scores
    fig, ax = plt.subplots()
    k = len(target["labels"])
    data.draw_annotations(ax, image, {**target, "masks": target["masks"][:, None].float() * 0.9},
                          scores=torch.linspace(0.5, 0.9, k), masks=True, contours=False)
    assert sorted(t.get_text().split()[-1] for t in ax.texts) == [
        f"{v:.2f}" for v in torch.linspace(0.5, 0.9, k).tolist()]
    plt.close(fig)
    fig = data.annotation_grid(ds, range(3), cols=2)
    assert len(fig.axes) == 4
    plt.close(fig)
