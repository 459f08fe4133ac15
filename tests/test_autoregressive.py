"""The autoregressive segmenter (icmlib.segmentation.autoregressive): a PixelCNN over labels."""
import pytest
import torch

from icmlib.segmentation import SegmentationError
from icmlib.segmentation.autoregressive import (AutoregressiveSegmenter,
                                                autoregressive_segmenter_for, coarse_labels,
                                                grid_ceiling_miou, sampling_cost,
                                                teacher_forcing_loss)


def _model(seed=0, k=3, factor=4):
    torch.manual_seed(seed)
    return AutoregressiveSegmenter(3, k, width=8, factor=factor, layers=2).eval()


def test_coarse_labels_take_each_cells_majority():
    masks = torch.zeros(1, 4, 4, dtype=torch.long)
    masks[0, :2, :2] = 2                  # the whole top-left cell
    masks[0, 2, 2] = 1                    # one pixel of four in the bottom-right cell
    grid = coarse_labels(masks, 2, 3)
    assert grid.tolist() == [[[2, 0], [0, 0]]]
    with pytest.raises(SegmentationError, match="multiple"):
        coarse_labels(torch.zeros(1, 6, 6, dtype=torch.long), 4, 3)


def test_a_position_never_sees_its_own_label_or_later_ones(one_thread):
    model = _model()
    images = torch.rand(1, 3, 32, 32)
    labels = torch.randint(3, (1, 8, 8))
    i, j = 4, 3
    later = labels.clone()
    later[0, i, j:] = torch.randint(3, (8 - j,))
    later[0, i + 1:] = torch.randint(3, (8 - i - 1, 8))
    earlier = labels.clone()
    earlier[0, i, j - 1] = (earlier[0, i, j - 1] + 1) % 3
    with torch.no_grad():
        a = model.logits(images, labels)[0, :, i, j]
        b = model.logits(images, later)[0, :, i, j]
        c = model.logits(images, earlier)[0, :, i, j]
    assert torch.allclose(a, b, atol=1e-6)
    assert not torch.allclose(a, c)       # the label to its left counts


def test_greedy_sampling_is_what_teacher_forcing_predicts_from_its_own_labels(one_thread):
    """Each greedy choice is the argmax given the labels chosen before it, so feeding the
    sample back in (teacher forcing on it) predicts the sample itself, everywhere. This
    also checks that sampling on a strip of rows computes the same as the whole grid."""
    model = _model(seed=1)
    images = torch.rand(2, 3, 48, 32)
    labels, evaluations = model.sample(images)
    assert labels.shape == (2, 12, 8) and evaluations == 12 * 8
    with torch.no_grad():
        again = model.logits(images, labels).argmax(1)
    assert torch.equal(again, labels)
    scores = model(images)                # forward: the sample at the image's resolution
    assert scores.shape == (2, 3, 48, 32)
    assert torch.equal(scores.argmax(1)[:, ::4, ::4], labels)


def test_sampling_with_temperature_is_reproducible_with_a_generator():
    model = _model(seed=2)
    images = torch.rand(1, 3, 16, 16)
    a, _ = model.sample(images, greedy=False, generator=torch.Generator().manual_seed(3))
    b, _ = model.sample(images, greedy=False, generator=torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_grid_ceiling_is_one_when_the_labels_fit_the_grid():
    masks = torch.zeros(2, 8, 8, dtype=torch.long)
    masks[:, :4, 4:] = 1
    assert grid_ceiling_miou(masks, 4, 2) == pytest.approx(1.0)
    masks[:, 0, 0] = 1                    # one pixel the grid cannot draw
    assert grid_ceiling_miou(masks, 4, 2) < 1.0


def test_teacher_forcing_fits_one_batch(one_thread):
    model = _model(seed=4).train()
    images = torch.rand(4, 3, 32, 32)
    masks = (images[:, 0] > 0.5).long() * 2
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = None
    for _ in range(25):
        loss, logs = teacher_forcing_loss(model, images, masks)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.7 * first and "ce" in logs


def test_sampling_cost_counts_one_evaluation_per_label_against_one_pass():
    model = _model()
    images = torch.rand(2, 3, 32, 32)
    cost = sampling_cost(model, images)
    assert cost["evaluations/image"] == 64 and cost["seconds/image"] > 0
    plain = torch.nn.Conv2d(3, 3, 1)
    assert sampling_cost(plain, images)["evaluations/image"] == 1


def test_factor_must_be_a_power_of_two():
    with pytest.raises(SegmentationError, match="power of two"):
        AutoregressiveSegmenter(3, 2, factor=3)


@pytest.mark.slow
def test_autoregressive_segmenter_trains_once(tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    model, record = autoregressive_segmenter_for("ci", progress=False, steps=5)
    assert record["steps_run"] == 5 and record["config"]["kind"] == "autoregressive"
    calls = []
    monkeypatch.setattr("icmlib.segmentation.autoregressive.train_segmenter",
                        lambda *a, **k: calls.append(1))
    again, _ = autoregressive_segmenter_for("ci", progress=False, steps=5)
    assert calls == []
    x = torch.rand(1, 3, 64, 64)
    assert torch.equal(model.sample(x)[0], again.sample(x)[0])
