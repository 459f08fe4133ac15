"""The explorer's computation and the cost counter behind the paper-scale chapter."""
import pytest
import torch

from icmlib.evaluation.anchors import JPEG
from icmlib.cost import codec_step_cost, seconds_at
from icmlib.data import dataset_for
from icmlib.tasks import build_task_network
from icmlib.widgets import Explorer


@pytest.fixture(scope="module")
def explorer():
    torch.manual_seed(0)
    val = dataset_for("ci", "val")
    return Explorer({"JPEG": JPEG()}, val, "detection", build_task_network("detection", "ci"))


def test_point_reports_real_bytes_psnr_and_map(explorer):
    p = explorer.point("JPEG", JPEG().qualities[0])
    image, _ = explorer.dataset[0]
    data = JPEG().encode(image, JPEG().qualities[0])
    assert p["bytes"] == len(data)
    assert p["bpp"] == pytest.approx(8 * len(data) / (image.shape[-1] * image.shape[-2]))
    assert 5 < p["psnr"] < 60
    assert 0.0 <= p["map"] <= 1.0
    assert explorer.point("original", None)["bpp"] is None


def test_closest_setting_matches_rate(explorer):
    qs = JPEG().qualities
    target = explorer.point("JPEG", qs[-1])["bpp"]
    assert explorer.closest_setting("JPEG", target) == qs[-1]
    low = explorer.point("JPEG", qs[0])["bpp"]
    assert explorer.closest_setting("JPEG", low) == qs[0]


def test_figure_and_widget_build(explorer):
    import matplotlib.pyplot as plt

    q = JPEG().qualities
    fig = explorer.figure(("JPEG", q[0]), ("JPEG", q[-1]))
    assert len(fig.axes) == 3 and "bpp" in fig.axes[1].get_title()
    plt.close(fig)
    box = explorer.widget()
    assert box.children  # image slider, codec pickers, match box, output


def test_explorer_rejects_bad_input():
    with pytest.raises(ValueError, match="at least one codec"):
        Explorer({}, None, "detection", torch.nn.Identity())
    with pytest.raises(ValueError, match="detection or instance"):
        Explorer({"JPEG": JPEG()}, None, "semantic", torch.nn.Identity())


def test_codec_step_cost_scales_with_pixels():
    small = codec_step_cost("ci", batch_size=1, crop_size=64)
    large = codec_step_cost("ci", batch_size=1, crop_size=128)
    assert small["flops_per_step"] > 0 and small["activation_bytes"] > 0
    assert large["flops_per_step"] == pytest.approx(4 * small["flops_per_step"], rel=0.02)
    assert large["activation_bytes"] == pytest.approx(4 * small["activation_bytes"], rel=0.02)
    assert seconds_at(2e12, 1.0) == 2.0
