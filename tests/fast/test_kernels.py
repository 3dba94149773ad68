"""decodekit's Triton kernels (decodekit.fast.kernels) against plain torch references.

On CUDA they run compiled; without CUDA under Triton's interpreter (tests/conftest.py turns it on),
so the same tests check the same code everywhere Triton is installed. Odd sizes (a hidden size and
a head size that are not powers of two), left padding, holes in the column masks, several new
tokens per row and grouped-query heads are covered; fp32 must agree to rounding, bf16 to bf16.
The GEMV kernels (RMSNorm + projection, SiLU-and-mul + projection + residual, projection +
residual) run at 1 to 16 rows, with and without bias, on strided rows; the references keep the
kernels' roundings. (The interpreter rounds fp32 to bf16 by truncation, CUDA to nearest: bf16
results differ between the two by about an ulp, within the bf16 tolerance.)
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from decodekit.fast import gemv as G
from decodekit.fast import kernels as K
from decodekit.fast import launch as L

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
_reason = L.kernel_reason(DEVICE, interpret=True)
pytestmark = pytest.mark.skipif(_reason is not None, reason=f"decodekit's Triton kernels: {_reason}")
TOL = {torch.float32: 1e-5, torch.bfloat16: 1e-2}


def _rel(got: torch.Tensor, want: torch.Tensor) -> float:
    return float((got.float() - want.float()).norm() / want.float().norm())


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat([-x[..., half:], x[..., :half]], -1)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("d", [64, 576])
def test_rms_norm(dtype, d):
    g = torch.Generator(device=DEVICE).manual_seed(d)
    x = torch.randn(5, d, generator=g, device=DEVICE).to(dtype)
    w = torch.randn(d, generator=g, device=DEVICE).to(dtype)
    want = F.rms_norm(x.float(), (d,), w.float(), 1e-5)
    assert _rel(K.rms_norm(x, w, 1e-5), want) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("ff", [96, 1536, 2500])
def test_silu_mul(dtype, ff):
    g = torch.Generator(device=DEVICE).manual_seed(ff)
    gate_up = torch.randn(3, 2 * ff, generator=g, device=DEVICE).to(dtype)
    want = F.silu(gate_up[:, :ff].float()) * gate_up[:, ff:].float()
    assert _rel(K.silu_mul(gate_up), want) < TOL[dtype]


def _case(rows, T, h, kv, hd, C, dtype, seed):
    g = torch.Generator(device=DEVICE).manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g, device=DEVICE).to(dtype)  # noqa: E731
    N = rows * T
    return dict(qkv=r(N, (h + 2 * kv) * hd), cos=r(N, hd), sin=r(N, hd), keys=r(rows, kv, C, hd),
                values=r(rows, kv, C, hd))


@pytest.mark.parametrize("last_combines", [False, True], ids=["two-kernels", "last-block-combines"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,T,h,kv,hd,C,at", [(1, 1, 9, 3, 64, 70, 40), (3, 4, 4, 2, 16, 70, 40),
                                                 (2, 2, 4, 4, 24, 70, 40),
                                                 (1, 2, 4, 2, 16, 1500, 1400)])  # 24 column blocks
def test_rope_write_and_attend(dtype, rows, T, h, kv, hd, C, at, last_combines):
    if C > 100 and dtype != torch.float32 and DEVICE.type != "cuda":
        pytest.skip("the interpreter is slow: the long cache runs in fp32 only on the CPU")
    c = _case(rows, T, h, kv, hd, C, dtype, seed=rows * 100 + T)
    keys0, values0 = c["keys"].clone(), c["values"].clone()
    write = torch.arange(at, at + T, device=DEVICE)  # [T]
    N = rows * T
    q = K.rope_write(c["qkv"], c["cos"], c["sin"], write, c["keys"], c["values"], h, kv, hd)  # [N, h, hd]

    x = c["qkv"].float().view(N, h + 2 * kv, hd)
    rot = x * c["cos"].float()[:, None] + _rotate_half(x) * c["sin"].float()[:, None]  # [N, h+2kv, hd]
    assert _rel(q, rot[:, :h]) < TOL[dtype]
    k_new = rot[:, h:h + kv].view(rows, T, kv, hd).transpose(1, 2)  # [rows, kv, T, hd]
    v_new = x[:, h + kv:].view(rows, T, kv, hd).transpose(1, 2)
    assert _rel(c["keys"][:, :, at:at + T], k_new) < TOL[dtype]
    assert torch.equal(c["values"][:, :, at:at + T], v_new.to(dtype))
    untouched = torch.ones(C, dtype=torch.bool, device=DEVICE)
    untouched[at:at + T] = False
    assert torch.equal(c["keys"][:, :, untouched], keys0[:, :, untouched])  # nothing else written
    assert torch.equal(c["values"][:, :, untouched], values0[:, :, untouched])

    mask = torch.ones(rows + 1, C, dtype=torch.long, device=DEVICE)  # one dummy row beyond, like a slab
    mask[0, :6] = 0  # left padding
    mask[-2, 12:15] = 0  # holes (rejected drafts)
    mask[:, at + T:] = 0  # columns not written yet
    o = K.attend(q, c["keys"], c["values"], mask, write, hd ** -0.5, last_combines=last_combines)  # [N, h, hd]
    if last_combines:
        assert not L._tickets[q.device].any()  # every ticket counter is left at zero for the next launch
    cols = torch.arange(C, device=DEVICE)
    allowed = (mask[:rows, None, :] > 0) & (cols[None, None, :] <= write[None, :, None])  # [rows, T, C]
    qq = q.float().view(rows, T, h, hd).transpose(1, 2)  # [rows, h, T, hd]
    kr = c["keys"].float().repeat_interleave(h // kv, 1)
    vr = c["values"].float().repeat_interleave(h // kv, 1)
    want = F.scaled_dot_product_attention(qq, kr, vr, attn_mask=allowed[:, None]).transpose(1, 2).reshape(N, h, hd)
    assert _rel(o, want) < TOL[dtype]


@pytest.mark.parametrize("last_combines", [False, True], ids=["two-kernels", "last-block-combines"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("rows,h,kv,hd,C,write", [(1, 9, 3, 64, 70, [40]), (3, 4, 2, 16, 70, [40, 41, 42, 43]),
                                                  (2, 4, 4, 24, 70, [39, 40]),  # a block edge between them
                                                  (1, 4, 2, 16, 600, [20, 40]),  # columns apart
                                                  (2, 4, 2, 16, 1500, [1398, 1399, 1400])])  # 24 blocks
def test_rope_attend_equals_rope_write_then_attend(dtype, rows, h, kv, hd, C, write, last_combines):
    """The one-kernel step leaves the cache as rope_write does and attends as attend does, though
    the cache holds NaN at the new columns when it starts (it takes them from the projection)."""
    if C > 100 and dtype != torch.float32 and DEVICE.type != "cuda":
        pytest.skip("the interpreter is slow: the long cache runs in fp32 only on the CPU")
    T = len(write)
    c = _case(rows, T, h, kv, hd, C, dtype, seed=rows * 10 + T + hd)
    write = torch.tensor(write, device=DEVICE)
    mask = torch.ones(rows + 1, C, dtype=torch.long, device=DEVICE)  # one dummy row beyond, like a slab
    mask[0, :6] = 0  # left padding
    mask[-2, 12:15] = 0  # holes (rejected drafts)
    mask[:, int(write.max()) + 1:] = 0  # columns not written yet
    keys, values = c["keys"].clone(), c["values"].clone()
    q = K.rope_write(c["qkv"], c["cos"], c["sin"], write, keys, values, h, kv, hd)  # [N, h, hd]
    want = K.attend(q, keys, values, mask, write, hd ** -0.5, last_combines=last_combines)  # [N, h, hd]
    c["keys"][:, :, write] = float("nan")
    c["values"][:, :, write] = float("nan")
    got = K.rope_attend(c["qkv"], c["cos"], c["sin"], write, c["keys"], c["values"], mask, h, kv, hd,
                        hd ** -0.5, last_combines=last_combines)
    if last_combines:
        assert not L._tickets[got.device].any()
    assert torch.equal(c["keys"], keys) and torch.equal(c["values"], values)  # the same cache
    if DEVICE.type == "cuda":  # compiled separately: the compiler may contract the rotation differently
        assert _rel(got, want) < TOL[dtype]
    else:
        assert torch.equal(got, want)


@pytest.mark.parametrize("last_combines", [False, True])
def test_attend_ignores_masked_columns_holding_garbage(last_combines):
    """Masked columns must not leak: huge values or NaN in them leave the result unchanged."""
    c = _case(2, 1, 4, 2, 16, 40, torch.float32, seed=7)
    write = torch.tensor([30], device=DEVICE)
    q = K.rope_write(c["qkv"], c["cos"], c["sin"], write, c["keys"], c["values"], 4, 2, 16)
    mask = torch.ones(2, 40, dtype=torch.long, device=DEVICE)
    mask[:, 10:20] = 0
    before = K.attend(q, c["keys"], c["values"], mask, write, 0.25, last_combines=last_combines)
    c["keys"][:, :, 10:20] = float("nan")
    c["values"][:, :, 10:20] = float("nan")
    c["keys"][:, :, 31:] = float("nan")  # beyond the token's own column
    after = K.attend(q, c["keys"], c["values"], mask, write, 0.25, last_combines=last_combines)
    assert torch.equal(before, after)


class _NanScratch:
    """``torch`` for the kernels module, whose ``empty`` / ``empty_like`` return NaN-filled tensors."""

    def __getattr__(self, name):
        return getattr(torch, name)

    @staticmethod
    def empty(*shape, **kw):
        return torch.full(shape[0] if len(shape) == 1 and isinstance(shape[0], tuple) else shape, float("nan"), **kw)

    @staticmethod
    def empty_like(t, **kw):
        return torch.full_like(t, float("nan"), **kw)


@pytest.mark.parametrize("last_combines", [False, True])
def test_attend_reads_only_the_blocks_it_wrote(last_combines, monkeypatch):
    """Blocks past a token's own column write no partials and the combine reads none of theirs: with
    every scratch buffer NaN to start with, a short fill of a long cache gives the same result."""
    c = _case(1, 2, 4, 2, 16, 600, torch.float32, seed=11)
    write = torch.tensor([20, 40], device=DEVICE)  # blocks 0-1 of 38 (block_c 16)
    q = K.rope_write(c["qkv"], c["cos"], c["sin"], write, c["keys"], c["values"], 4, 2, 16)
    mask = torch.ones(2, 600, dtype=torch.long, device=DEVICE)
    want = K.attend(q, c["keys"], c["values"], mask, write, 0.25, block_c=16, last_combines=last_combines)
    assert not want.isnan().any()
    monkeypatch.setattr(K, "torch", _NanScratch())
    got = K.attend(q, c["keys"], c["values"], mask, write, 0.25, block_c=16, last_combines=last_combines)
    assert torch.equal(got, want)


# the GEMV kernels: a few rows (N <= 16) times a small weight; odd sizes (d = 72, out = 200); an eps
# large enough that dropping it shows; rows of x and gate_up strided, as views into wider buffers
EPS = 0.1


def _norm_ref(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:  # [N, d] float32, rounded like rms_norm
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + EPS) * w.float()).to(x.dtype).float()


def _rows(N: int, width: int, dtype, g) -> torch.Tensor:  # [N, width], rows 9 elements apart beyond width
    return torch.randn(N, width + 9, generator=g, device=DEVICE).to(dtype)[:, :width]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
@pytest.mark.parametrize("N,d,out,block_k", [(1, 72, 200, None), (3, 72, 200, None), (5, 72, 200, 32),
                                             (16, 40, 24, 16)])
@pytest.mark.parametrize("late", [False, True], ids=["sum-each-tile", "sum-late"])
def test_norm_linear(dtype, bias, N, d, out, block_k, late):
    g = torch.Generator(device=DEVICE).manual_seed(N * 1000 + d)
    x = _rows(N, d, dtype, g)  # [N, d]
    norm_w = (1 + torch.randn(d, generator=g, device=DEVICE)).to(dtype)
    w = torch.randn(out, d, generator=g, device=DEVICE).to(dtype)
    b = torch.randn(out, generator=g, device=DEVICE).to(dtype) if bias else None
    got = G.norm_linear(x, norm_w, EPS, w, b, block_k=block_k, late=late)  # [N, out]
    want = F.linear(_norm_ref(x, norm_w), w.float(), None if b is None else b.float())
    assert got.shape == (N, out) and got.dtype == dtype
    assert _rel(got, want) < TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("N,d,ff,block_k", [(1, 72, 100, None), (3, 72, 100, None), (5, 72, 300, 64), (16, 24, 40, 16)])
@pytest.mark.parametrize("late", [False, True], ids=["sum-each-tile", "sum-late"])
def test_act_linear_add_(dtype, N, d, ff, block_k, late):
    g = torch.Generator(device=DEVICE).manual_seed(N * 1000 + ff)
    x = torch.randn(N + 2, d, generator=g, device=DEVICE).to(dtype)  # rows past N must stay as they are
    x0 = x.clone()
    gate_up = _rows(N, 2 * ff, dtype, g)  # [N, 2 * ff]
    w = torch.randn(d, ff, generator=g, device=DEVICE).to(dtype)
    assert G.act_linear_add_(x[:N], gate_up, w, block_k=block_k, late=late).data_ptr() == x.data_ptr()
    act = (F.silu(gate_up[:, :ff].float()) * gate_up[:, ff:].float()).to(dtype).float()  # silu_mul's rounding
    want = x0[:N].float() + act @ w.float().T
    assert _rel(x[:N], want) < TOL[dtype]
    assert torch.equal(x[N:], x0[N:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("bias", [False, True], ids=["no-bias", "bias"])
def test_linear_add_(dtype, bias):
    g = torch.Generator(device=DEVICE).manual_seed(5)
    N, d, k = 5, 72, 200
    x = torch.randn(N, d, generator=g, device=DEVICE).to(dtype)
    x0 = x.clone()
    a = _rows(N, k, dtype, g)  # [N, k]
    w = torch.randn(d, k, generator=g, device=DEVICE).to(dtype)
    b = torch.randn(d, generator=g, device=DEVICE).to(dtype) if bias else None
    assert G.linear_add_(x, a, w, b) is x
    want = x0.float() + F.linear(a.float(), w.float(), None if b is None else b.float())
    assert _rel(x, want) < TOL[dtype]


def test_gemv_limits(monkeypatch):
    assert G.gemv_fits(G.GEMV_FIT_ROWS, 3072, 576) and not G.gemv_fits(G.GEMV_FIT_ROWS + 1, 3072, 576)
    assert G.gemv_fits(1, 14336 * 2, 4096) and not G.gemv_fits(2, 14336 * 2, 4096)  # large weights: one row
    monkeypatch.setattr(G, "GEMV_LARGE", False)
    assert not G.gemv_fits(1, 14336 * 2, 4096) and G.gemv_fits(1, 960, 576)
    monkeypatch.setattr(G, "GEMV", False)
    assert not G.gemv_fits(1, 960, 576)
    x = torch.zeros(G.GEMV_MAX_ROWS + 1, 16, device=DEVICE)
    with pytest.raises(ValueError, match="rows"):
        G.norm_linear(x, torch.ones(16, device=DEVICE), EPS, torch.zeros(16, 16, device=DEVICE))
    with pytest.raises(ValueError, match="dtype"):
        G.linear_add_(x[:2], x[:2].bfloat16(), torch.zeros(16, 16, device=DEVICE))


def test_gemv_large_weight_launch(monkeypatch):
    """Weights past GEMV_MAX_ELEMENTS take LARGE_BLOCKS' launch (several reduction blocks summed late):
    the same results as the small-weight launch, to fp32 rounding, for all three kernels."""
    g = torch.Generator(device=DEVICE).manual_seed(31)
    d, out, ff = 96, 40, 160
    x = torch.randn(1, d, generator=g, device=DEVICE)
    norm_w = 1 + torch.randn(d, generator=g, device=DEVICE)
    w = torch.randn(out, d, generator=g, device=DEVICE)
    gate_up = torch.randn(1, 2 * ff, generator=g, device=DEVICE)
    down = torch.randn(d, ff, generator=g, device=DEVICE)
    small = (G.norm_linear(x, norm_w, EPS, w), G.act_linear_add_(x.clone(), gate_up, down),
             G.linear_add_(x.clone(), gate_up[:, :ff], down))
    monkeypatch.setattr(G, "GEMV_MAX_ELEMENTS", 1000)
    monkeypatch.setattr(G, "LARGE_BLOCKS", dict(block_o=8, block_k=32, late=True))
    grid, meta = G._gemv_launch(x, down, gate_up, None, None, None, None)
    assert meta["LATE"] and meta["BK"] == 32 and meta["BO"] == 8 and grid[0] == d // 8
    large = (G.norm_linear(x, norm_w, EPS, w), G.act_linear_add_(x.clone(), gate_up, down),
             G.linear_add_(x.clone(), gate_up[:, :ff], down))
    for got, want in zip(large, small):
        assert _rel(got, want) < TOL[torch.float32]


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gemv_rows_are_independent(dtype):
    """A row's result is the same bits whatever the rows beside it and however many there are (each
    program reduces every row alone): a token's projections in a 4-token step equal a 1-token step's."""
    g = torch.Generator(device=DEVICE).manual_seed(21)
    limit, d, out, ff = G.GEMV_FIT_ROWS, 72, 200, 100
    x = torch.randn(limit, d, generator=g, device=DEVICE).to(dtype)
    norm_w = (1 + torch.randn(d, generator=g, device=DEVICE)).to(dtype)
    w = torch.randn(out, d, generator=g, device=DEVICE).to(dtype)
    gate_up = torch.randn(limit, 2 * ff, generator=g, device=DEVICE).to(dtype)
    down = torch.randn(d, ff, generator=g, device=DEVICE).to(dtype)
    full = G.norm_linear(x, norm_w, EPS, w)  # [limit, out]
    added = G.act_linear_add_(x.clone(), gate_up, down)  # [limit, d]
    for n in range(1, limit + 1):
        other = torch.randn(n, d, generator=g, device=DEVICE).to(dtype)
        other[0] = x[n - 1]  # the row at the top, among other rows
        assert torch.equal(G.norm_linear(x[:n], norm_w, EPS, w), full[:n])
        assert torch.equal(G.norm_linear(other, norm_w, EPS, w)[0], full[n - 1])
        assert torch.equal(G.act_linear_add_(x[:n].clone(), gate_up[:n], down), added[:n])


@pytest.mark.parametrize("split_k", [1, 2, 4])
def test_gemv_split_k_is_reproducible(split_k):
    """Split-K (the last program of each output block sums the fp32 partials in split order) agrees
    with the reference, gives the same bits on a second call and leaves every ticket at zero; the
    reduction in one block (block_k 128 >= 100 columns) and several warps settings take the same path."""
    g = torch.Generator(device=DEVICE).manual_seed(11 + split_k)
    N, d, ff = 2, 24, 100
    x = torch.randn(N, d, generator=g, device=DEVICE)
    gate_up = _rows(N, 2 * ff, torch.float32, g)  # [N, 2 * ff]
    w = torch.randn(d, ff, generator=g, device=DEVICE)
    act = F.silu(gate_up[:, :ff]) * gate_up[:, ff:]
    want = x + act @ w.T
    blocks = dict(block_o=8, block_k=32 if split_k > 1 else 128, split_k=split_k, num_warps=2)
    once = G.act_linear_add_(x.clone(), gate_up, w, **blocks)
    assert _rel(once, want) < TOL[torch.float32]
    assert torch.equal(G.act_linear_add_(x.clone(), gate_up, w, **blocks), once)
    norm_w = 1 + torch.randn(ff, generator=g, device=DEVICE)
    normed = G.norm_linear(act, norm_w, EPS, w, block_o=4, block_k=32, split_k=split_k)  # [N, d]
    assert _rel(normed, F.linear(_norm_ref(act, norm_w), w)) < TOL[torch.float32]
    if split_k > 1:
        assert not L._tickets[x.device].any()  # reset for the next launch


def test_gemv_default_blocks():
    """The default launch: 8 outputs a program, the whole reduction in one block up to 2048 columns,
    split-K only for few output blocks over several reduction blocks."""
    w = torch.empty(960, 576)
    grid, meta = G._gemv_launch(torch.empty(3, 960), w, torch.empty(3, 576), None, None, None, None)
    assert grid == (120, 1) and (meta["BO"], meta["BK"], meta["KS"], meta["BN"]) == (8, 1024, 1024, 4)
    grid, meta = G._gemv_launch(torch.empty(1, 96), torch.empty(96, 8192), torch.empty(1, 8192), None, None, None, None)
    assert grid == (12, 4) and (meta["BK"], meta["KS"], meta["SPLIT"]) == (2048, 2048, 4)
    grid, meta = G._gemv_launch(torch.empty(1, 96), torch.empty(96, 300), torch.empty(1, 300), 8, 64, 1, 2)
    assert grid == (12, 2) and (meta["KS"], meta["num_warps"]) == (192, 1)  # 5 blocks: 3 + 2
    assert meta["PDL"] is False and "launch_pdl" not in meta  # no programmatic dependent launch on the CPU


def test_pdl_meta():
    """Programmatic dependent launch only where the device has it (CUDA, compute capability >= 9.0),
    never under the interpreter; forced on, Triton's launch keyword comes with it."""
    assert L.pdl_meta(torch.device("cpu")) == {"PDL": False}
    assert L.pdl_meta(torch.device("cpu"), True) == {"PDL": True, "launch_pdl": True}
    assert L.pdl_meta(DEVICE, False) == {"PDL": False}
    on = DEVICE.type == "cuda" and torch.cuda.get_device_capability(DEVICE)[0] >= 9 and L.gdc_wait is not None
    assert L.pdl_supported(DEVICE) == (on and L.PDL)


def _layer_chain(x, layers, cos, sin, write, mask, h, kv, hd):
    """The fused step's decode layers as its kernels run them (norm + q/k/v, rotary + cache write +
    attention, output projection + residual, norm + gate/up, activation + down + residual)."""
    for w in layers:
        qkv = G.norm_linear(x, w["g1"], EPS, w["qkv"])
        o = K.rope_attend(qkv, cos, sin, write, w["keys"], w["values"], mask, h, kv, hd, hd ** -0.5)
        G.linear_add_(x, o.view(x.shape[0], h * hd), w["o"])
        gu = G.norm_linear(x, w["g2"], EPS, w["gate_up"])
        G.act_linear_add_(x, gu, w["down"])
    return x


@pytest.mark.gpu
@pytest.mark.skipif(not (DEVICE.type == "cuda" and L.pdl_supported(DEVICE)), reason="needs a GPU with PDL")
@pytest.mark.parametrize("rows", [1, 4])
def test_pdl_chain_equals_plain_launches(rows, monkeypatch):
    """A chain of dependent kernels launched with programmatic dependent launch -- eagerly and
    replayed from a CUDA graph, several times over -- gives the plain launches' residual stream and
    caches bit for bit: no kernel reads its predecessor's output (or writes) before it has waited."""
    g = torch.Generator(device=DEVICE).manual_seed(rows)
    bf, d, ff, h, kv, hd, C = torch.bfloat16, 576, 1536, 9, 3, 64, 96
    r = lambda *s: torch.randn(*s, generator=g, device=DEVICE).to(bf)  # noqa: E731
    layers = [dict(g1=1 + 0.1 * r(d), g2=1 + 0.1 * r(d), qkv=r((h + 2 * kv) * hd, d) * d ** -0.5,
                   o=r(d, h * hd) * (h * hd) ** -0.5, gate_up=r(2 * ff, d) * d ** -0.5, down=r(d, ff) * ff ** -0.5,
                   keys=r(rows, kv, C, hd), values=r(rows, kv, C, hd)) for _ in range(6)]
    x0, cos, sin = r(rows, d), r(rows, hd), r(rows, hd)
    write = torch.tensor([50], device=DEVICE)
    mask = torch.ones(rows, C, dtype=torch.long, device=DEVICE)
    mask[:, 51:] = 0
    caches0 = [(w["keys"].clone(), w["values"].clone()) for w in layers]

    def run(pdl: bool, graph: bool):
        monkeypatch.setattr(L, "PDL", pdl)
        for w, (k0, v0) in zip(layers, caches0):
            w["keys"].copy_(k0), w["values"].copy_(v0)
        x = x0.clone()
        _layer_chain(x, layers, cos, sin, write, mask, h, kv, hd)
        if graph:  # the same chain captured, replayed three times from the same start
            gr = torch.cuda.CUDAGraph()
            with torch.cuda.graph(gr):
                _layer_chain(x, layers, cos, sin, write, mask, h, kv, hd)
            for _ in range(3):
                x.copy_(x0)
                gr.replay()
        torch.cuda.synchronize()
        return x.clone(), [(w["keys"].clone(), w["values"].clone()) for w in layers]

    want_x, want_caches = run(False, False)
    for graph in (False, True):
        got_x, got_caches = run(True, graph)
        assert torch.equal(got_x, want_x)
        assert all(torch.equal(a, c) and torch.equal(b, e) for (a, b), (c, e) in zip(got_caches, want_caches))


class _FakeKernel:
    """Records each launch's keywords; a launch with ``launch_pdl`` fails where ``pdl_fails``."""

    def __init__(self, pdl_fails: bool):
        self.pdl_fails, self.launches = pdl_fails, []

    def __getitem__(self, grid):
        def run(*args, **meta):
            self.launches.append(meta)
            if meta.get("launch_pdl") and self.pdl_fails:
                raise RuntimeError("CUDA driver: launch attribute not supported")
        return run


def test_launch_falls_back_once_when_pdl_cannot_launch(monkeypatch):
    """A first launch with PDL that fails turns PDL off (warning) and launches the plain kernel; once a
    PDL launch has succeeded, failures are the kernel's own and are raised."""
    monkeypatch.setattr(L, "PDL", True)
    monkeypatch.setattr(L, "_pdl_launched", False)
    kernel = _FakeKernel(pdl_fails=True)
    with pytest.warns(RuntimeWarning, match="programmatic dependent launch failed"):
        L.launch(kernel, (1,), 0, PDL=True, launch_pdl=True, num_warps=4)
    assert kernel.launches == [dict(PDL=True, launch_pdl=True, num_warps=4), dict(PDL=False, num_warps=4)]
    assert L.PDL is False and L.pdl_meta(DEVICE) == {"PDL": False}

    monkeypatch.setattr(L, "PDL", True)
    ok = _FakeKernel(pdl_fails=False)
    L.launch(ok, (1,), 0, PDL=True, launch_pdl=True)
    assert L._pdl_launched and len(ok.launches) == 1
    with pytest.raises(RuntimeError, match="not supported"):  # after a success: not PDL's fault, raised
        L.launch(_FakeKernel(pdl_fails=True), (1,), 0, PDL=True, launch_pdl=True)
    assert L.PDL is True
