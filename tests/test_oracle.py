"""The background oracle: images whose background is replaced, and validation on them."""
import pytest
import torch

from icmlib.codec import ICMCodec
from icmlib.evaluation.oracle import flat_shapes, kept_region, without_background
from icmlib.training.validation import validate_codec


def _noisy_image_with_square():
    torch.manual_seed(0)
    image = torch.rand(3, 32, 32)
    masks = torch.zeros(1, 32, 32, dtype=torch.uint8)
    masks[0, 8:16, 8:16] = 1
    return image, {"masks": masks}


def test_flat_keeps_the_objects_and_their_margin_and_paints_the_rest_its_mean():
    image, target = _noisy_image_with_square()
    out = without_background(image, target, "flat", margin=2)
    keep = kept_region(target, 32, 32, margin=2)
    assert keep.sum() == 12 * 12  # the 8x8 square widened by 2 px on every side
    assert torch.equal(out[:, keep], image[:, keep])
    background = image[:, ~keep].mean(1)
    assert torch.allclose(out[:, ~keep], background[:, None].expand(3, int((~keep).sum())))


def test_blur_keeps_the_objects_and_smooths_the_background():
    image, target = _noisy_image_with_square()
    out = without_background(image, target, "blur", margin=0, sigma=2.0)
    keep = kept_region(target, 32, 32, margin=0)
    assert torch.equal(out[:, keep], image[:, keep])
    assert out[:, ~keep].std() < 0.5 * image[:, ~keep].std()


def test_an_image_without_objects_is_all_background():
    image, _ = _noisy_image_with_square()
    out = without_background(image, {"masks": torch.zeros(0, 32, 32)}, "flat")
    assert torch.allclose(out, image.mean((1, 2))[:, None, None].expand_as(image))


@pytest.mark.parametrize("call, message", [
    (lambda im, t: without_background(im, t, "black"), "unknown fill"),
    (lambda im, t: without_background(im[None], t), r"one \[3, H, W\] image"),
    (lambda im, t: without_background(im, t, margin=-1), "margin must be >= 0"),
])
def test_bad_arguments_are_refused_clearly(call, message):
    image, target = _noisy_image_with_square()
    with pytest.raises(ValueError, match=message):
        call(image, target)


def test_validate_codec_codes_the_images_it_is_given_instead_of_the_datasets():
    torch.manual_seed(0)
    net = ICMCodec(N=8, M=8).eval()
    net.update(force=True)
    noisy = [(torch.rand(3, 64, 64), {}) for _ in range(2)]
    flat = [torch.full((3, 64, 64), 0.5) for _ in range(2)]
    own = validate_codec(net, noisy, 2)
    assert validate_codec(net, noisy, 2, images=[x for x, _ in noisy]) == own
    given = validate_codec(net, noisy, 2, images=flat)
    # PSNR is measured against what was coded: it tells which images were
    assert abs(given["psnr"] - own["psnr"]) > 1
    with pytest.raises(ValueError, match="got 1 images for 2 dataset entries"):
        validate_codec(net, noisy, 2, images=flat[:1])


def test_flat_shapes_leaves_each_object_its_mean_colour_and_nothing_else():
    image, target = _noisy_image_with_square()
    out = flat_shapes(image, target)
    inside = target["masks"][0] > 0
    assert torch.allclose(out[:, inside], image[:, inside].mean(1, keepdim=True).expand(3, 64))
    assert torch.allclose(out[:, ~inside], image[:, ~inside].mean(1, keepdim=True).expand(3, 32 * 32 - 64))


def test_the_oracle_study_figure_draws_a_line_per_codec_and_input(tmp_path):
    import json

    import matplotlib
    matplotlib.use("Agg")
    from icmlib.evaluation.oracle import plot_oracle_curves

    rows = [{"codec": "uncompressed", "input": "none", "bpp": None, "map": 0.5}]
    for codec, fill, scale in [("MSE baseline", "none", 1.0), ("MSE baseline", "flat", 0.8),
                               ("ICM fixed", "none", 0.6)]:
        rows += [{"codec": codec, "input": fill, "bpp": scale * b, "map": m}
                 for b, m in [(0.05, 0.2), (0.1, 0.4), (0.2, 0.45), (0.3, 0.44)]]
    path = tmp_path / "study.json"
    path.write_text(json.dumps({"meta": {}, "rows": rows}))
    ax = plot_oracle_curves(path)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["MSE baseline", "MSE baseline, flat input", "ICM fixed",
                      "uncompressed (0.500)", "the range the savings cover"]
    first = ax.get_lines()[0]
    assert len(first.get_xdata()) == 3  # the frontier: (0.3, 0.44) is beaten by (0.2, 0.45)


def test_oracle_savings_are_bd_rates_against_the_baseline_over_one_common_range():
    from icmlib.evaluation.oracle import oracle_savings

    points = [(0.05, 0.2), (0.1, 0.4), (0.2, 0.45), (0.4, 0.5)]
    rows = [{"codec": "uncompressed", "input": "none", "bpp": None, "map": 0.5}]
    rows += [{"codec": "MSE baseline", "input": "none", "bpp": b, "map": m} for b, m in points]
    rows += [{"codec": "MSE baseline", "input": "flat", "bpp": b / 2, "map": m} for b, m in points]
    rows += [{"codec": "ICM fixed", "input": "none", "bpp": b / 4, "map": m} for b, m in points]
    # a codec that starts higher up: every row is measured over its range, 0.4-0.5
    rows += [{"codec": "ICM auto", "input": "none", "bpp": b / 2, "map": m} for b, m in points[1:]]
    flat, fixed, auto = oracle_savings(rows)
    assert [(r["codec"], r["input"]) for r in (flat, fixed, auto)] == [
        ("MSE baseline", "flat"), ("ICM fixed", "none"), ("ICM auto", "none")]
    assert flat["range"] == fixed["range"] == auto["range"] == (0.4, 0.5)
    assert [flat[k] for k in ("lower", "upper", "whole")] == pytest.approx([-50.0] * 3)
    assert [fixed[k] for k in ("lower", "upper", "whole")] == pytest.approx([-75.0] * 3)
    assert auto["whole"] == pytest.approx(-50.0, abs=2)  # its own fit through 3 points
    rows += [{"codec": "ICM high", "input": "none", "bpp": 1.0 + m, "map": m} for m in (0.6, 0.7)]
    assert all(r["whole"] is None and "no accuracy range in common" in r["note"]
               for r in oracle_savings(rows))


def test_oracle_savings_against_another_baseline_leaving_one_out():
    """A study with two baselines: the savings against either, the other left out of the
    rows and of the common range."""
    from icmlib.evaluation.oracle import oracle_savings

    points = [(0.05, 0.2), (0.1, 0.4), (0.2, 0.45), (0.4, 0.5)]
    rows = [{"codec": "MSE baseline", "input": "none", "bpp": b, "map": m} for b, m in points]
    rows += [{"codec": "better baseline", "input": "none", "bpp": b / 2, "map": m}
             for b, m in points]
    rows += [{"codec": "ICM", "input": "none", "bpp": b / 4, "map": m} for b, m in points]
    # a baseline that starts higher up would narrow the range: left out, it does not
    rows += [{"codec": "high", "input": "none", "bpp": b, "map": m} for b, m in points[2:]]
    (icm,) = oracle_savings(rows, baseline="better baseline", leave_out=("MSE baseline", "high"))
    assert icm["codec"] == "ICM" and icm["range"] == (0.2, 0.5)
    assert icm["whole"] == pytest.approx(-50.0)
    better, icm = oracle_savings(rows, leave_out=("high",))
    assert better["whole"] == pytest.approx(-50.0) and icm["whole"] == pytest.approx(-75.0)
