"""icmlib.codec.ans: decodes exactly what it encodes, and matches CompressAI's rANS coder."""
import numpy as np
import pytest
import torch
from compressai import ans as compressai_ans
from compressai.entropy_models.entropy_models import pmf_to_quantized_cdf

from icmlib.codec import ans
from icmlib.codec import ICMCodec, decode_image, encode_image


def random_pmf(rng, n):
    """A pmf with a few near-zero probabilities (the hard case for quantisation)."""
    p = rng.dirichlet(np.full(n, rng.choice([0.1, 1.0, 10.0])))
    tiny = rng.random(n) < 0.3
    p[tiny] = rng.random(tiny.sum()) * 1e-9
    return p / p.sum()


def compressai_tables(rng, n_tables, max_symbols=40):
    """CDF tables in CompressAI's layout (padded rows, lengths, offsets, escape symbol)."""
    lengths = rng.integers(3, max_symbols, n_tables)
    cdfs = np.zeros((n_tables, lengths.max()), dtype=np.int64)
    for k, n in enumerate(lengths):
        c = pmf_to_quantized_cdf(torch.tensor(random_pmf(rng, n - 1), dtype=torch.float32), 16)
        cdfs[k, :n] = c.numpy()
    offsets = rng.integers(-30, 5, n_tables)
    return cdfs, lengths, offsets


# ---- quantize_cdf ----------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(20))
def test_quantize_cdf_is_a_valid_cdf_close_to_the_pmf(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(1, 300))
    p = random_pmf(rng, n)
    cdf = ans.quantize_cdf(p, 16)
    freq = np.diff(cdf)
    assert cdf[0] == 0 and cdf[-1] == 1 << 16 and len(cdf) == n + 1
    assert freq.min() >= 1                           # even p ≈ 0 stays codable
    # each frequency is within a few slots of p · 2^16 (the rest went to big symbols)
    assert np.all(np.abs(freq - p * 2**16) <= np.maximum(2, 0.01 * p * 2**16 + n))


def test_quantize_cdf_rejects_what_it_cannot_code():
    with pytest.raises(ans.RansError):
        ans.quantize_cdf([])
    with pytest.raises(ans.RansError):
        ans.quantize_cdf([0.5, -0.1, 0.6])
    with pytest.raises(ans.RansError):
        ans.quantize_cdf(np.ones(300), precision=8)     # 300 symbols, 256 slots
    with pytest.raises(ans.RansError):
        ans.encode([0, 1], [0, 10, 10, 1 << 16])         # a symbol with no slot


# ---- round trip ------------------------------------------------------------------------
@pytest.mark.parametrize("seed", range(30))
def test_decodes_exactly_what_it_encodes(seed):
    rng = np.random.default_rng(seed)
    n_tables = int(rng.integers(1, 6))
    tables = [ans.quantize_cdf(random_pmf(rng, int(rng.integers(1, 50))), 16)
              for _ in range(n_tables)]
    n = int(rng.choice([0, 1, 2, 3, rng.integers(4, 3000)]))
    idx = rng.integers(0, n_tables, n)
    # symbols drawn uniformly, so the near-impossible ones (1 slot of 65536) occur often
    sym = np.array([rng.integers(0, len(tables[k]) - 1) for k in idx], dtype=np.int64)
    data = ans.encode(sym, tables, idx)
    assert isinstance(data, bytes)
    assert np.array_equal(ans.decode(data, n, tables, idx), sym)


@pytest.mark.parametrize("word_bits,lower_bound", [(8, 1 << 23), (16, 1 << 31), (32, 1 << 31)])
def test_other_word_sizes_round_trip(word_bits, lower_bound):
    rng = np.random.default_rng(word_bits)
    p = random_pmf(rng, 30)
    cdf = ans.quantize_cdf(p)
    sym = rng.choice(30, 5000, p=p)
    data = ans.encode(sym, cdf, word_bits=word_bits, lower_bound=lower_bound)
    assert np.array_equal(ans.decode(data, len(sym), cdf, word_bits=word_bits,
                                     lower_bound=lower_bound), sym)


def test_empty_message_is_the_flushed_initial_state():
    cdf = ans.quantize_cdf([0.5, 0.5])
    data = ans.encode([], cdf)
    assert data == ans.LOWER_BOUND.to_bytes(8, "little")
    assert ans.decode(data, 0, cdf).size == 0


def test_size_is_close_to_the_ideal_code_length():
    rng = np.random.default_rng(0)
    p = random_pmf(rng, 64)
    cdf = ans.quantize_cdf(p)
    sym = rng.choice(64, 20_000, p=p)
    bits = 8 * len(ans.encode(sym, cdf))
    ideal = ans.ideal_bits(sym, cdf)
    assert ideal <= bits <= 1.001 * ideal + 64 + 32   # + flushed state + one partial word
    # and quantising the probabilities to 16 bits costs almost nothing
    assert ideal <= 1.005 * -np.log2(p[sym]).sum()


def test_damaged_streams_raise_instead_of_misdecoding_silently():
    rng = np.random.default_rng(1)
    cdf = ans.quantize_cdf(random_pmf(rng, 16))
    sym = rng.integers(0, 16, 2000)
    data = ans.encode(sym, cdf)
    with pytest.raises(ans.RansError):
        ans.decode(data[:-4], len(sym), cdf)           # truncated
    with pytest.raises(ans.RansError):
        ans.decode(data[:5], len(sym), cdf)            # not even a state
    with pytest.raises(ans.RansError):
        ans.decode(data + b"\0\0\0\0", len(sym), cdf)  # words left over at the end


def test_trace_shows_the_state_growing_by_minus_log2_p():
    cdf = ans.quantize_cdf([0.5, 0.25, 0.125, 0.125])
    enc = ans.RansEncoder(trace=True)
    for s in reversed([0, 1, 2]):
        enc.put(int(cdf[s]), int(cdf[s + 1] - cdf[s]))
    states = [ans.LOWER_BOUND] + [x for x, _ in enc.trace]
    growth = np.diff(np.log2(states))
    assert np.allclose(growth, [3, 2, 1], atol=1e-3)  # symbols 2, 1, 0 pushed in reverse


# ---- CompressAI's conventions ----------------------------------------------------------
@pytest.mark.parametrize("seed", range(8))
def test_same_bytes_as_compressai_including_bypass(seed):
    rng = np.random.default_rng(100 + seed)
    cdfs, lengths, offsets = compressai_tables(rng, int(rng.integers(1, 8)))
    n = [0, 1, 100, 10_000][seed % 4]
    idx = rng.integers(0, len(cdfs), n)
    values = rng.integers(0, 40, n)
    outliers = rng.random(n) < 0.05                  # far outside the tables: bypass mode
    values[outliers] = rng.integers(-5000, 5000, outliers.sum())
    sym = values + offsets[idx]
    args = (sym.tolist(), idx.tolist(), cdfs.tolist(), lengths.tolist(), offsets.tolist())
    ours = ans.encode_with_indexes(*args)
    assert ans.decode_with_indexes(ours, *args[1:]) == sym.tolist()
    if n < 100:
        # CompressAI's encoder sizes its buffer as one word per symbol: 0 symbols
        # segfaults and 1 writes out of bounds, so compare on longer messages only.
        return
    theirs = compressai_ans.RansEncoder().encode_with_indexes(*args)
    assert ours == theirs                            # byte for byte, so sizes agree exactly
    assert compressai_ans.RansDecoder().decode_with_indexes(ours, *args[1:]) == sym.tolist()


def test_long_sequence_size_within_one_percent_of_compressai():
    rng = np.random.default_rng(7)
    cdfs, lengths, offsets = compressai_tables(rng, 4, max_symbols=100)
    n = 50_000
    idx = rng.integers(0, 4, n)
    # draw symbols from the tables' own distributions
    sym = np.empty(n, dtype=np.int64)
    for k in range(4):
        pmf = np.diff(cdfs[k, :lengths[k]]) / 2**16
        sym[idx == k] = rng.choice(lengths[k] - 1, (idx == k).sum(), p=pmf) + offsets[k]
    args = (sym.tolist(), idx.tolist(), cdfs.tolist(), lengths.tolist(), offsets.tolist())
    theirs = len(compressai_ans.RansEncoder().encode_with_indexes(*args))
    ours = len(ans.encode_with_indexes(*args))
    assert abs(ours - theirs) <= 0.01 * theirs


def test_real_codec_latents_same_bytes_and_pixels_as_compressai():
    """A codec's own CDF tables after update(): both coders give the same strings."""
    torch.manual_seed(0)
    net = ICMCodec(N=16, M=24).eval()
    net.update(force=True)
    x = torch.rand(1, 3, 70, 90)
    theirs = encode_image(net, x)
    with ans.use_icmlib_ans(net):
        ours = encode_image(net, x)
        decoded = decode_image(net, ours["strings"], ours["shape"], ours["size"])
    assert ours["strings"] == theirs["strings"]
    assert torch.equal(decoded, decode_image(net, *[theirs[k] for k in ("strings", "shape", "size")]))
    # the context manager put CompressAI's coder back
    assert net.gaussian_conditional.entropy_coder.name == "ans"


def test_compressai_adapter_validates_tables():
    cdfs = [[0, 100, 1 << 16]]
    with pytest.raises(ans.RansError):
        ans.encode_with_indexes([0], [0], [[0, 100, 50000]], [3], [0])   # does not end at 2^16
    with pytest.raises(ans.RansError):
        ans.encode_with_indexes([0], [1], cdfs, [3], [0])               # no table 1
    with pytest.raises(ans.RansError):
        ans.encode_with_indexes([0], [0], cdfs, [2], [0])               # no room for escape


@pytest.mark.parametrize("bad", [-1, 4, 5])
def test_ideal_bits_refuses_symbols_outside_the_table_as_encode_does(bad):
    """An out-of-range symbol has no probability: a clear error, not inf or nan bits."""
    cdf = ans.quantize_cdf([0.4, 0.3, 0.2, 0.1])
    with pytest.raises(ans.RansError, match="outside its table"):
        ans.encode([0, bad], cdf)
    with pytest.raises(ans.RansError, match="outside its table"):
        ans.ideal_bits([0, bad], cdf)


def test_a_bypassed_value_longer_than_any_encoder_writes_is_refused():
    """A damaged stream can announce any number of 4-bit chunks (15 means "more follow"):
    more than an int64 needs is refused at once, rather than read into an ever larger
    integer (quadratic time: a hang on a long stream)."""
    cdfs, lengths, offsets = [[0, 30000, 1 << 16]], [3], [0]   # value 0, then the escape
    enc = ans.RansEncoder()
    for chunk in [1] * 17:                       # pushed in reverse: the decoder pops
        enc.put_bits(chunk, ans.BYPASS_BITS)     # count 15 + 2 = 17 chunks, then the chunks
    enc.put_bits(2, ans.BYPASS_BITS)
    enc.put_bits(15, ans.BYPASS_BITS)
    enc.put(30000, (1 << 16) - 30000)            # the escape symbol
    with pytest.raises(ans.RansError, match="more than 16 chunks"):
        ans.decode_with_indexes(enc.flush(), [0], cdfs, lengths, offsets)


def test_compressai_adapter_refuses_values_compressai_cannot_hold():
    """CompressAI's decoder returns int32; values beyond (only a damaged stream decodes to
    them) are a RansError, not an overflow error from torch."""
    cdfs, lengths, offsets = [[0, 30000, 1 << 16]], [3], [0]
    data = ans.encode_with_indexes([2 ** 40], [0], cdfs, lengths, offsets)
    assert ans.decode_with_indexes(data, [0], cdfs, lengths, offsets) == [2 ** 40]
    with pytest.raises(ans.RansError, match="32 bits"):
        ans.CompressAICoder().decode_with_indexes(data, [0], cdfs, lengths, offsets)


def test_checked_decoding_makes_no_python_call_per_symbol():
    """Every .icm file's streams go through ``decode_with_indexes``: its loop must make no
    Python call per symbol (``RansDecoder.peek``/``.advance`` per symbol cost 40 % of the
    decoding time), only for the rare bypassed values."""
    import sys

    rng = np.random.default_rng(3)
    cdfs, lengths, offsets = compressai_tables(rng, 4)
    n = 5000
    idx = rng.integers(0, 4, n)
    sym = rng.integers(0, lengths[idx] - 2) + offsets[idx]      # no escapes
    args = (sym.tolist(), idx.tolist(), cdfs.tolist(), lengths.tolist(), offsets.tolist())
    data = ans.encode_with_indexes(*args)
    calls = []
    sys.setprofile(lambda frame, event, arg: calls.append(1) if event == "call" else None)
    try:
        decoded = ans.decode_with_indexes(data, *args[1:])
    finally:
        sys.setprofile(None)
    assert decoded == args[0] and len(calls) < 100, len(calls)
