"""The torch ops (python/lca/ops.py) against lca.reference, the spec in plain
PyTorch, on fresh random inputs; and their argument errors. Needs PyTorch and a
CUDA device (the device machine): `python3 -m pytest tests/test_torch_ops.py`
or `python3 tests/test_torch_ops.py`. Skips where no GPU is present."""

import math
import pathlib
import sys

import pytest
import torch

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "python"))
from lca import ops, reference  # noqa: E402

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def rel(a, b):
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all(), "non-finite output"
    return ((a - b).norm() / b.norm()).item()


def dense_lca(q, keys, values, reps, window, group, scale):
    """Section 4 by an explicit mask over [reps ; raw], float64."""
    n = q.shape[0]
    t = torch.arange(n, device=q.device)[:, None]
    kv = torch.arange(keys.shape[0], device=q.device)[None, :]
    mask = reference.lca_mask_mod(reps, window, group)(0, 0, t, kv)
    per = q.shape[1] // keys.shape[1]
    k = keys.double().repeat_interleave(per, 1)
    v = values.double().repeat_interleave(per, 1)
    s = torch.einsum("thd,khd->htk", q.double(), k) * scale
    s = s.masked_fill(~mask[None], -math.inf)
    return torch.einsum("htk,khd->thd", s.softmax(-1), v)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("n,window,group", [(700, 256, 16), (1500, 1024, 16), (333, 100, 7)])
def test_gqa_prefill_matches_spec(n, window, group, dtype):
    torch.manual_seed(n + group)
    q = torch.randn(n, 8, 128, device="cuda", dtype=dtype)
    k = torch.randn(n, 2, 128, device="cuda", dtype=dtype)
    v = torch.randn(n, 2, 128, device="cuda", dtype=dtype)
    scale = 128**-0.5
    out = ops.lca_prefill_gqa(q, k, v, window=window, group=group, scale=scale)
    rk, rv, anchors = reference.condense_gqa(k, v, q, window=window, group=group, scale=scale)
    summary = ops.summary_queries_gqa(q, 2)
    gk, gv, ganchors = ops.condense_gqa(k, v, summary, 8, window=window, group=group, scale=scale)
    assert torch.equal(ganchors, anchors)
    assert rel(gk, rk) < 1e-2 and rel(gv, rv) < 1e-2
    want = dense_lca(q, torch.cat((rk, k)), torch.cat((rv, v)), rk.shape[0], window, group, scale)
    assert rel(out, want) < 1e-2


def test_full_attention_matches_sdpa():
    torch.manual_seed(0)
    q, k, v = (torch.randn(777, 4, 64, device="cuda", dtype=torch.bfloat16) for _ in range(3))
    out = ops.full_attention(q, k, v)
    want = torch.nn.functional.scaled_dot_product_attention(
        *(t.double().transpose(0, 1) for t in (q, k, v)), is_causal=True).transpose(0, 1)
    assert rel(out, want) < 1e-2


def test_mla_condense_matches_spec():
    torch.manual_seed(1)
    n, heads, window, group = 1200, 16, 300, 16
    c = torch.randn(n, 512, device="cuda", dtype=torch.bfloat16)
    kr = torch.randn(n, 64, device="cuda", dtype=torch.bfloat16)
    summary = torch.randn(n, 512, device="cuda") * 0.3
    scale = 192**-0.5
    rl, rr, anchors = ops.condense_mla(c, kr, summary, heads, scale=scale, window=window, group=group)
    wl, wr, wanchors = reference.condense_mla(c, kr, summary, heads, window=window, group=group, scale=scale)
    assert torch.equal(anchors, wanchors)
    assert torch.equal(rr, wr)
    assert rel(rl, wl) < 1e-2


def test_bad_arguments_raise_value_errors():
    q = torch.randn(10, 8, 128, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(10, 3, 128, device="cuda", dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="kv_heads"):
        ops.full_attention(q, k, k)
    with pytest.raises(ValueError, match="bfloat16 or float16"):
        ops.full_attention(q.float(), k.float(), k.float())
    with pytest.raises(ValueError, match="CUDA"):
        ops.full_attention(q.cpu(), k.cpu(), k.cpu())
    with pytest.raises(ValueError, match="head dims"):
        ops.full_attention(q[..., :80].contiguous(), k[:, :2, :80].contiguous(), k[:, :2, :80].contiguous())
    with pytest.raises(ValueError, match="key_mode"):
        ops.condense_gqa(k, k, torch.zeros(10, 3, 128, device="cuda"), 6, key_mode="mean")


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-v"]))
