"""icmlib.segmentation (issue 12): DeepLab's dilated convolutions, staged unfreezing, training
with and without augmentation, and the test split that every reported number comes from."""

import pytest
import torch

import icmlib.segmentation as seg
from icmlib.presets import get_preset
from icmlib.segmentation import ASPP, DeepLab, UNet, dilated_block
from test_segmentation import toy_batch  # the same toy data as the segmentation tests

torch.set_num_threads(1)


# --- dilated convolutions ------------------------------------------------------------------

def test_dilated_block_keeps_the_size_and_widens_the_view():
    x = torch.rand(1, 3, 33, 33)
    for d in (1, 2, 4):
        assert dilated_block(3, 4, d)(x).shape == (1, 4, 33, 33)
    # two 3x3 layers dilated by d see 4d + 1 pixels (16 channels: some path through the
    # ReLUs stays alive at every tap)
    torch.manual_seed(0)
    assert [seg.receptive_field(dilated_block(3, 16, d).eval(), 33) for d in (1, 2, 4)] == [5, 9, 17]


def test_aspp_branches_and_shape():
    aspp = ASPP(8, 6, rates=(1, 3))
    assert len(aspp.branches) == 3                      # 1x1 + one per rate (+ image pooling)
    assert aspp(torch.rand(2, 8, 10, 12)).shape == (2, 6, 10, 12)
    assert aspp(torch.rand(1, 8, 5, 5)).shape == (1, 6, 5, 5)   # batch of one: no BN on the pool


def test_deeplab_output_stride_shapes_and_transfer_interface():
    net = DeepLab(3, 4, width=4, depth=3, dilated_stages=1)
    assert net.output_stride == 4
    assert net(torch.rand(2, 3, 37, 50)).shape == (2, 4, 37, 50)
    assert len(net.encoder_stages) == 4 and net.encoder is net.encoder_stages
    feats = torch.rand(1, 3, 32, 32)
    for stage in net.encoder_stages:
        feats = stage(feats)
    assert feats.shape[-1] == 32 // 4                   # the dilated stage did not pool
    assert DeepLab(3, 4, 4, 3, dilated_stages=2).output_stride == 2
    with pytest.raises(ValueError, match="dilated_stages"):
        DeepLab(3, 4, 4, 2, dilated_stages=3)
    seg.set_trainable(net, "frozen")
    assert not any(p.requires_grad for p in net.encoder.parameters())
    assert all(p.requires_grad for p in net.aspp.parameters())


def test_deeplab_learns_a_toy_task():
    data = toy_batch(16, 32)
    net = DeepLab(3, 3, width=8, depth=2)
    result = seg.train_segmenter(net, data, data, steps=40, batch_size=8, lr=1e-2, val_every=20,
                                 progress=False)
    assert result["val"]["miou"] > 0.5


# --- staged unfreezing ---------------------------------------------------------------------

def test_staged_starts_frozen_and_unfreezes_stage_by_stage(monkeypatch):
    torch.manual_seed(0)
    data = toy_batch(8, 32)
    model = seg.set_trainable(UNet(3, 3, width=4, depth=2), "staged")
    assert not any(p.requires_grad for p in model.encoder.parameters())
    seen = []
    real = seg.transfer.train_segmenter

    def spy(model, *args, **kwargs):
        seen.append((kwargs["steps"], sum(p.numel() for p in model.parameters() if p.requires_grad)))
        return real(model, *args, **kwargs)

    monkeypatch.setattr(seg.transfer, "train_segmenter", spy)
    result = seg.train_staged(model, data, data, steps=7, batch_size=4, val_every=2, progress=False)
    assert [n for n, _ in seen] == [2, 2, 3]            # the remainder goes to the last stage
    counts = [c for _, c in seen]
    assert counts[0] < counts[1] < counts[2] == sum(p.numel() for p in model.parameters())
    assert result["steps_run"] == 7 and result["stages"] == seg.STAGES
    assert [h["step"] for h in result["history"]] == list(range(1, 8))
    assert [h["stage"] for h in result["history"]] == ["frozen"] * 2 + ["last"] * 2 + ["all"] * 3
    assert 1 <= result["best_step"] <= 7
    # the best validation weights over all stages are the ones left in the model
    pred = seg.predict(model, data[0])
    assert seg.segmentation_metrics(pred, data[1], 3)["miou"] == pytest.approx(result["val"]["miou"])


def test_transfer_keys_add_augment_only_when_off(monkeypatch):
    """The augmented runs keep the cache keys they always had; runs without augmentation
    (and the staged regime) are new configurations."""
    import icmlib.segmentation.transfer as transfer

    configs = []

    def capture(kind, config, train, **kwargs):
        configs.append(dict(config))
        return {"state_dict": None, "trainable_params": 0, "val": {}, "train_seconds": 0.0}

    monkeypatch.setattr(transfer, "train_or_load", capture)
    monkeypatch.setattr(transfer, "segmentation_num_classes", lambda preset: 5)
    monkeypatch.setattr(transfer, "_world_config", lambda preset: {})
    records = transfer.run_transfer_experiment("ci", progress=False)
    assert set(records) == {"source", *seg.REGIMES}
    assert all("augment" not in c for c in configs)
    assert [c.get("regime") for c in configs[1:]] == list(seg.REGIMES)
    configs.clear()
    transfer.run_transfer_experiment("ci", regimes=("all",), augment=False, progress=False)
    assert configs[-1]["augment"] is False and configs[-1]["regime"] == "all"


# --- the test split --------------------------------------------------------------------------

def test_coco_test_images_follow_the_validation_images():
    from icmlib.segmentation.data import _split_range

    coco = get_preset("gpu")
    assert coco.dataset == "coco"
    val_start, n = _split_range(coco, "val")
    test_start, m = _split_range(coco, "test")
    assert val_start + n <= test_start and m == n       # val2017 read twice, never the same image
    synthetic = get_preset("ci")
    assert _split_range(synthetic, "test") == (0, synthetic.seg_eval_images)  # its own stream
    with pytest.raises(seg.SegmentationError, match="unknown split"):
        seg.segmentation_data("ci", "holdout")


def test_segmenter_from_record_rebuilds_the_network():
    torch.manual_seed(0)
    net = UNet(3, 5, 4, 2)
    record = {"config": {"kind": "recipe", "num_classes": 5, "width": 4, "depth": 2},
              "state_dict": net.state_dict()}
    again = seg.segmenter_from_record(record)
    x = torch.rand(1, 3, 16, 16)
    assert torch.equal(net.eval()(x), again(x)) and not again.training
    source = seg.segmenter_from_record({"config": {"kind": "source", "width": 4, "depth": 2},
                                        "state_dict": UNet(3, 2, 4, 2).state_dict()})
    assert source.num_classes == 2
    with pytest.raises(seg.SegmentationError, match="rebuild"):
        seg.segmenter_from_record({"config": {"kind": "codec", "width": 4, "depth": 2}})


@pytest.mark.slow       # generates a small synthetic world (three splits) first
def test_test_split_is_its_own_and_reports(tmp_path, monkeypatch):
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    preset = get_preset("ci", seg_steps=2, seg_val_every=1, seg_width=4, seg_depth=2)
    val_x, _ = seg.segmentation_data(preset, "val")
    test_x, test_y = seg.segmentation_data(preset, "test")
    assert len(test_x) == len(val_x) == preset.seg_eval_images
    assert not any(torch.equal(t, v) for t in test_x for v in val_x)
    model, record = seg.segmenter_for("deeplab", preset, progress=False)
    assert isinstance(model, DeepLab)
    assert record["test"] == seg.test_metrics(model, preset)
    assert record["test"] == seg.segmentation_metrics(seg.predict(model, test_x), test_y,
                                                      model.num_classes)
    rows = seg.test_results({"deeplab": record}, preset)
    assert rows["deeplab"]["miou"] == record["test"]["miou"] and rows["deeplab"]["steps run"] == 2
    _, patch_record = seg.segmenter_for("patch", preset, progress=False)   # a PatchClassifier
    assert set(patch_record["test"]) >= {"miou", "boundary_f1"}
