"""Decoding that gives the same image on every device and thread count, at full speed.

The decoder must recompute, from ẑ alone, the very CDF the encoder chose for each symbol of
ŷ: h_s's scale, rounded up to an entry of the scale table, names it. A scale 1e-7 off near
an entry picks the neighbouring CDF, and the file decodes to garbage with no error. This
path -- h_s, then scale → table index -- is therefore computed bit-exactly alike on every
device and thread count (:class:`ExactHyperSynthesis`), and the index search is exact
*and* fast (:class:`TableGaussianConditional`).

The rest of decoding, the synthesis transform g_s on ŷ, decides no CDF: a last-bit
difference there moves a pixel by 1e-7. It runs in PyTorch's fast kernels (oneDNN, on
channels-last tensors, its faster layout on the CPU), but on one thread
(:func:`on_one_thread`): oneDNN chooses how it blocks a convolution by the thread count, and
its results then differ in the last bit between 1 and 2 threads (GDN's 1×1 convolution at
any size; 3×3 ones on small inputs), which flips a few pixels of an 8-bit image. On one
thread the decoded file is the same whatever ``torch.get_num_threads()`` -- the ``.icm``
promise. PyTorch's reference kernels (oneDNN switched off, what decoding used before) took
about twice as long on one thread, and their results too changed with the thread count on
some image sizes. The price: more threads do not speed up the synthesis
(``benchmarks/bench_codec.py`` measures both).
"""
from __future__ import annotations

import torch
import torch.nn as nn
from compressai.entropy_models import GaussianConditional


class ExactHyperSynthesis(nn.Sequential):
    """h_s, an ``nn.Sequential`` (same state-dict keys) whose eval-mode output is the same
    on every device.

    h_s's scales pick the CDF that codes each symbol of ŷ, so the encoder and the decoder
    must get them bit for bit alike, or the file decodes to garbage with no error. float32
    convolutions differ between devices (a GPU's TF32 rounds inputs to 10 bits, summation
    orders differ, oneDNN's depend on the thread count): results 1e-7 apart already pick
    another table where a scale lies near a table boundary. Outside training h_s
    therefore runs in float64 on the CPU -- ẑ (integers plus the stored medians) and the
    weights convert exactly, oneDNN has no float64 kernels -- and is rounded to the
    input's dtype, which every device then compares with the scale table alike. Two CPUs
    can still differ in float64's last bit (1e-16): a different table then needs a scale
    within that of one of the table's boundaries, about 1e-14 per symbol, against about
    one symbol in ten with TF32. Training keeps the fast path on the model's device.
    """

    def forward(self, x):
        if self.training:
            return super().forward(x)
        # contiguous: the same kernels and summation order whatever layout the caller uses
        out = x.to("cpu", torch.float64).contiguous()
        for layer in self:
            tensors = dict(layer.named_parameters())
            tensors.update(layer.named_buffers())
            exact = {k: t.to("cpu", torch.float64).contiguous() for k, t in tensors.items()}
            out = torch.func.functional_call(layer, exact, (out,))
        return out.to(x.device, x.dtype)


class TableGaussianConditional(GaussianConditional):
    """CompressAI's ``GaussianConditional`` whose ``build_indexes`` searches the scale table.

    CompressAI's compares every scale with every table entry in turn: 512 passes over ŷ
    with the codec's fine table, several times the cost of h_s itself. The index is the
    same integer -- how many entries but the last lie below the (lower-bounded) scale; a
    NaN counts as above them all, as in CompressAI -- found by a binary search. Same
    buffers, same state-dict keys, same CDFs: files coded either way are identical.
    """

    def build_indexes(self, scales: torch.Tensor) -> torch.Tensor:
        scales = self.lower_bound_scale(scales)
        table = self.scale_table[:-1].to(scales.device, scales.dtype)
        return torch.searchsorted(table, scales.contiguous(), out_int32=True)


def on_one_thread(fn, *args):
    """``fn(*args)`` on one torch thread; the caller's thread count is restored after."""
    before = torch.get_num_threads()
    if before == 1:
        return fn(*args)
    torch.set_num_threads(1)
    try:
        return fn(*args)
    finally:
        torch.set_num_threads(before)
