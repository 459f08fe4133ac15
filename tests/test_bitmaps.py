"""Where the bits go: bit maps and the share of bits inside objects."""
import pytest
import torch

from icmlib.evaluation.bitmaps import (bit_map, block_coverage, object_bit_share, object_mask,
                                       object_share_if_bits_followed_objects, plot_bit_maps)
from icmlib.codec import ICMCodec


class _FakeCodec(torch.nn.Module):
    """Spends 1 bit per channel on the latent blocks where the image is bright, none
    elsewhere: its bits are all where the bright object is."""

    def forward(self, x):
        bright = torch.nn.functional.avg_pool2d(x.mean(1, keepdim=True), 16) > 0.5
        p = torch.where(bright, 0.5, 1.0).expand(-1, 4, -1, -1)
        return {"x_hat": x, "likelihoods": {"y": p, "z": torch.ones(1)}}


def _world(n=2):
    items = []
    for k in range(n):
        image = torch.zeros(3, 64, 64)
        masks = torch.zeros(1, 64, 64)
        image[:, 16:32, 16 * k:16 * k + 32] = 1.0  # two (k=1: two) blocks of object
        masks[0, 16:32, 16 * k:16 * k + 32] = 1
        items.append((image, {"masks": masks}))
    return items


def test_all_bits_inside_objects_gives_share_one_and_the_area_share():
    share = object_bit_share(_FakeCodec(), _world())
    assert share["object_bit_share"] == pytest.approx(1.0)
    assert share["object_area_share"] == pytest.approx(2 / 16)  # 2 of 16 blocks per image


def test_bits_outside_objects_lower_the_share():
    world = [(img, {"masks": torch.roll(t["masks"], 32, dims=2)}) for img, t in _world()]
    assert object_bit_share(_FakeCodec(), world)["object_bit_share"] == pytest.approx(0.0)


def test_bit_map_of_a_real_codec_any_size_and_coverage():
    torch.manual_seed(0)
    net = ICMCodec(8, 8).eval()
    m = bit_map(net, torch.rand(3, 70, 45))
    assert m.shape == (5, 3) and bool((m >= 0).all())
    cover = block_coverage(object_mask({"masks": torch.ones(1, 70, 45)}, 70, 45))
    assert cover.shape == (5, 3) and float(cover[0, 0]) == 1.0 and float(cover[-1, -1]) < 1.0
    assert float(object_mask({"masks": torch.zeros(0, 8, 8)}, 8, 8).sum()) == 0.0
    with pytest.raises(ValueError):
        object_bit_share(net, [], 0)


def test_share_if_bits_followed_objects_is_below_one_for_objects_off_the_block_grid():
    assert object_share_if_bits_followed_objects(_world()) == pytest.approx(1.0)  # whole blocks
    image, masks = torch.zeros(3, 32, 32), torch.zeros(1, 32, 32)
    masks[0, 8:24, 0:16] = 1  # half of block (0, 0) and half of block (1, 0)
    assert object_share_if_bits_followed_objects([(image, {"masks": masks})]) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        object_share_if_bits_followed_objects([])


def test_plot_bit_maps_draws_one_row_per_image():
    import matplotlib
    matplotlib.use("Agg")
    axes = plot_bit_maps({"fake": _FakeCodec()}, _world(), indices=(0, 1))
    assert axes.shape == (2, 2) and "100% inside objects" in axes[0, 1].get_title()
