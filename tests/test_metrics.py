"""Tests of icmlib.metrics: PSNR, MS-SSIM, bpp and COCO mAP against known values."""
import math

import numpy as np
import pytest
import torch

from icmlib.metrics import (bpp, coco_map, ms_ssim, ms_ssim_levels, predictions_to_coco,
                            psnr)


def test_psnr_known_values():
    a = torch.zeros(1, 3, 8, 8, dtype=torch.float64)
    b = torch.full((1, 3, 8, 8), 0.1, dtype=torch.float64)   # MSE = 0.01 -> 20 dB
    assert psnr(a, b) == pytest.approx(20.0, abs=1e-9)
    b = torch.full((1, 3, 8, 8), 0.01, dtype=torch.float64)  # MSE = 1e-4 -> 40 dB
    assert psnr(a, b) == pytest.approx(40.0, abs=1e-9)
    # 8-bit range
    assert psnr(a * 255, b * 255, data_range=255) == pytest.approx(40.0, abs=1e-6)
    assert math.isinf(psnr(a, a))


def test_psnr_averages_per_image_values():
    a = torch.zeros(2, 3, 4, 4)
    b = torch.stack([torch.full((3, 4, 4), 0.1), torch.full((3, 4, 4), 0.01)])
    per_image = psnr(a, b, reduction="none")
    assert per_image.tolist() == pytest.approx([20.0, 40.0])
    assert psnr(a, b) == pytest.approx(30.0)


def test_psnr_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match="same shape"):
        psnr(torch.zeros(3, 8, 8), torch.zeros(3, 8, 9))


@pytest.mark.parametrize("size", [64, 128, 192])
def test_ms_ssim_identical_is_one_and_noise_lowers_it(size):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, size, size, generator=g)
    assert ms_ssim(x, x) == pytest.approx(1.0, abs=1e-5)
    noisy = (x + 0.2 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    less = (x + 0.05 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert ms_ssim(x, noisy) < ms_ssim(x, less) < 1.0


def test_ms_ssim_levels_follow_the_window_rule():
    assert ms_ssim_levels(161) == 5 and ms_ssim_levels(160) == 4
    assert ms_ssim_levels(128) == 4 and ms_ssim_levels(64) == 3
    with pytest.raises(ValueError, match="larger than"):
        ms_ssim(torch.zeros(1, 3, 8, 8), torch.zeros(1, 3, 8, 8))


def test_ms_ssim_matches_pytorch_msssim_on_large_images():
    from pytorch_msssim import ms_ssim as reference

    g = torch.Generator().manual_seed(1)
    x = torch.rand(1, 3, 176, 176, generator=g)
    y = (x + 0.1 * torch.randn(x.shape, generator=g)).clamp(0, 1)
    assert ms_ssim(x, y) == pytest.approx(float(reference(x, y, data_range=1.0)), abs=1e-6)


def test_bpp_counts_real_bytes():
    assert bpp(1024, 64, 128) == pytest.approx(1.0)
    assert bpp([[b"x" * 100], [b"y" * 28]], 32, 32) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        bpp(10, 0, 8)


# ---- COCO mAP on a tiny hand-made ground truth -----------------------------------------
def _toy_coco():
    from pycocotools import mask as mask_utils
    from pycocotools.coco import COCO

    images, anns = [], []
    masks = {}
    for image_id in (1, 2):
        images.append({"id": image_id, "width": 32, "height": 32, "file_name": f"{image_id}.png"})
        for k, (x, y, w, h, cat) in enumerate([(2, 3, 10, 8, 1), (15, 14, 12, 15, 2)]):
            m = np.zeros((32, 32), np.uint8)
            m[y:y + h, x:x + w] = 1
            rle = mask_utils.encode(np.asfortranarray(m))
            rle["counts"] = rle["counts"].decode("ascii")
            ann_id = len(anns) + 1
            anns.append({"id": ann_id, "image_id": image_id, "category_id": cat,
                         "bbox": [x, y, w, h], "area": float(w * h), "iscrowd": 0,
                         "segmentation": rle})
            masks.setdefault(image_id, []).append((m, [x, y, x + w, y + h], cat))
    coco = COCO()
    coco.dataset = {"images": images, "annotations": anns,
                    "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]}
    coco.createIndex()
    return coco, masks


def _perfect_outputs(masks):
    outputs, ids = [], []
    for image_id, objs in masks.items():
        outputs.append({
            "boxes": torch.tensor([b for _, b, _ in objs], dtype=torch.float32),
            "labels": torch.tensor([c for _, _, c in objs]),
            "scores": torch.tensor([0.9, 0.8]),
            "masks": torch.stack([torch.from_numpy(m).float()[None] * 0.9 for m, _, _ in objs]),
        })
        ids.append(image_id)
    return outputs, ids


def test_predictions_to_coco_converts_boxes_and_masks():
    coco, masks = _toy_coco()
    outputs, ids = _perfect_outputs(masks)
    results = predictions_to_coco(outputs, ids)
    assert len(results) == 4
    assert results[0]["bbox"] == [2.0, 3.0, 10.0, 8.0]          # xyxy -> xywh
    assert results[0]["category_id"] == 1 and results[0]["score"] == pytest.approx(0.9)
    from pycocotools import mask as mask_utils
    assert mask_utils.area(results[0]["segmentation"]) == 80     # thresholded at 0.5


def test_coco_map_is_one_for_perfect_predictions():
    coco, masks = _toy_coco()
    outputs, ids = _perfect_outputs(masks)
    results = predictions_to_coco(outputs, ids)
    for iou_type in ("bbox", "segm"):
        stats = coco_map(coco, results, iou_type=iou_type)
        assert stats["map"] == pytest.approx(1.0) and stats["map50"] == pytest.approx(1.0)


def test_coco_map_drops_for_shifted_boxes_and_is_zero_when_empty(capsys):
    coco, masks = _toy_coco()
    capsys.readouterr()                                           # createIndex's chatter
    outputs, ids = _perfect_outputs(masks)
    for out in outputs:
        out["boxes"] = out["boxes"] + 1.0                         # IoU 0.65 and 0.75
    shifted = coco_map(coco, predictions_to_coco(outputs, ids), "bbox")
    assert 0.0 < shifted["map"] < 1.0
    empty = coco_map(coco, [], "bbox", image_ids=[1, 2])
    assert empty["map"] == 0.0 and empty["map50"] == 0.0
    assert capsys.readouterr().out == ""                          # pycocotools silenced


def test_coco_map_clear_errors():
    coco, masks = _toy_coco()
    with pytest.raises(ValueError, match="iou_type"):
        coco_map(coco, [], iou_type="keypoints")
    outputs, ids = _perfect_outputs(masks)
    results = predictions_to_coco(outputs, [7, 8])
    with pytest.raises(ValueError, match="not in the ground truth"):
        coco_map(coco, results)
