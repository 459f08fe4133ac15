"""The attention segmenter (icmlib.segmentation.attention): a small SegFormer."""
import pytest
import torch
import torch.nn.functional as F

from icmlib.segmentation import SEGMENTERS, segmenter_for
from icmlib.segmentation.attention import (EfficientSelfAttention, MixFFN, OverlapPatchEmbed,
                                           SegFormerLite, segformer_for_width)


def test_logits_have_the_images_size_for_any_size(one_thread):
    model = segformer_for_width(3, 5, 4).eval()
    for h, w in ((64, 64), (64, 96), (48, 80)):
        with torch.no_grad():
            assert model(torch.rand(2, 3, h, w)).shape == (2, 5, h, w)


def test_overlapping_patch_embedding_strides_and_overlaps():
    embed = OverlapPatchEmbed(3, 8, kernel=7, stride=4)
    tokens, h, w = embed(torch.rand(1, 3, 32, 48))
    assert (h, w) == (8, 12) and tokens.shape == (1, 96, 8)
    assert embed.proj.kernel_size[0] > embed.proj.stride[0]          # windows overlap


def test_spatial_reduction_shrinks_keys_and_values_by_r_squared():
    attn = EfficientSelfAttention(16, heads=2, reduction=4)
    attn.keep_attention = True
    h, w = 16, 12
    attn(torch.rand(3, h * w, 16), h, w)
    assert attn.attention.shape == (3, 2, h * w, (h // 4) * (w // 4))
    assert torch.allclose(attn.attention.sum(-1), torch.ones(3, 2, h * w), atol=1e-5)


def test_without_reduction_it_is_plain_multi_head_attention():
    """R = 1: the same numbers as PyTorch's own scaled dot-product attention."""
    torch.manual_seed(0)
    attn = EfficientSelfAttention(16, heads=4, reduction=1)
    x = torch.rand(2, 30, 16)
    b, n, c, d = 2, 30, 16, 4
    q = attn.q(x).reshape(b, n, 4, d).transpose(1, 2)
    k, v = attn.kv(x).reshape(b, n, 2, 4, d).permute(2, 0, 3, 1, 4)
    expected = attn.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, c))
    assert torch.allclose(attn(x, 5, 6), expected, atol=1e-5)


def test_mix_ffn_depthwise_convolution_gives_tokens_their_position():
    """Attention and linear layers treat tokens as a set: shuffling them shuffles the output.
    Mix-FFN's 3x3 depthwise convolution does not: it knows who is next to whom."""
    torch.manual_seed(0)
    ffn, attn = MixFFN(8), EfficientSelfAttention(8, heads=2, reduction=1)
    x = torch.rand(1, 16, 8)
    perm = torch.randperm(16)
    with torch.no_grad():
        assert torch.allclose(attn(x, 4, 4)[:, perm], attn(x[:, perm], 4, 4), atol=1e-5)
        assert not torch.allclose(ffn(x, 4, 4)[:, perm], ffn(x[:, perm], 4, 4), atol=1e-3)


def test_a_few_steps_fit_one_batch(one_thread):
    torch.manual_seed(0)
    model = SegFormerLite(3, 3, dims=(8, 16), heads=(1, 2), reductions=(2, 1), decoder_dim=8)
    x = F.interpolate(torch.rand(4, 3, 4, 4), size=(32, 32), mode="nearest")   # 8x8 blocks
    y = (x[:, 0] > 0.5).long() + (x[:, 1] > 0.7).long()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    first = None
    for _ in range(30):
        loss = F.cross_entropy(model(x), y)
        first = first if first is not None else loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.5 * first


def test_stages_must_agree():
    with pytest.raises(ValueError, match="one entry per stage"):
        SegFormerLite(3, 2, dims=(8, 16), heads=(1,), reductions=(2, 1))
    with pytest.raises(ValueError, match="divisible"):
        EfficientSelfAttention(10, heads=3, reduction=1)


@pytest.mark.slow
def test_attention_is_a_registered_segmenter_trained_once_with_the_unets_recipe(
        tmp_path, monkeypatch, one_thread):
    monkeypatch.setenv("ICM_CACHE", str(tmp_path))
    assert "attention" in SEGMENTERS
    model, record = segmenter_for("attention", "ci", progress=False, steps=6)
    assert isinstance(model, SegFormerLite)
    assert record["steps_run"] == 6 and 0.0 <= record["test"]["miou"] <= 1.0
    calls = []
    monkeypatch.setattr("icmlib.segmentation.train.train_segmenter",
                        lambda *a, **k: calls.append(1))
    again, _ = segmenter_for("attention", "ci", progress=False, steps=6)
    assert calls == []
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), again(x))
