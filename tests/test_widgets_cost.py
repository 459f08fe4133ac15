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


def test_the_frozen_detector_is_counted_without_weight_gradients():
    """The ICM step's detector term: loss and backward into the image only, extended along
    the line through two counts (the heads do not grow with the pixels)."""
    from torchvision.models.detection import fasterrcnn_resnet50_fpn

    from icmlib.cost import _toy_targets, frozen_detector_cost, task_forward_backward_cost

    frozen = frozen_detector_cost("detection", 96, sides=(64, 96))
    trained = task_forward_backward_cost(
        fasterrcnn_resnet50_fpn(weights=None, weights_backbone=None, min_size=96, max_size=96),
        torch.rand(1, 3, 96, 96), _toy_targets("detection", 1, 96))
    assert 0 < frozen["flops_per_image"] < trained["flops_per_step"]  # no weight gradients
    assert frozen["parameters"] == trained["parameters"]


def test_budget_table_is_flops_over_the_assumed_throughput():
    from icmlib.cost import CUDA_OVERHEAD_GIB, GPUS, budget_table, peak_memory_gib

    step = {"flops_per_step": 2e12, "activation_bytes": 2 * 2**30, "codec_parameters": 2**26,
            "detector_parameters": 2**28}
    assert peak_memory_gib(step, amp=False) == pytest.approx(2 + 1 + 1 + CUDA_OVERHEAD_GIB)
    assert peak_memory_gib(step) == pytest.approx(1 + 1 + 1 + CUDA_OVERHEAD_GIB)
    rows = budget_table(step, steps_per_codec=3600, codecs=2, session_hours=1.0,
                        gpus={"X": {"peak_tflops": 20.0, "memory_gib": 3.5}}, utilization=0.1)
    (row,) = rows
    assert row["s per step"] == pytest.approx(1.0) and row["min per 1000 steps"] == pytest.approx(1000 / 60)
    assert row["h per ICM codec"] == pytest.approx(1.0) and row["h for all codecs"] == pytest.approx(2.0)
    assert row["codec fits a session"] and not row["memory fits"]
    assert set(GPUS) == {"T4", "L4", "A100"}
