"""lca.attention against python/lca/reference.py (the spec in plain PyTorch), the identities of
spec section 7, and autograd gradients (gradcheck in float64)."""

import math

import pytest

torch = pytest.importorskip("torch")

from lca import reference  # noqa: E402
from lca.attention import full_attention, lca_attention, visibility  # noqa: E402
from lca.ops import condensed_groups  # noqa: E402


def reference_gqa(q, k, v, *, window, group, scale, key_mode, mass_bias=False):
    """One sequence per batch row through reference.condense_gqa, attention with reference.lca_mask_mod."""
    outs = []
    for b in range(q.shape[0]):
        qb, kb, vb = (x[b].transpose(0, 1) for x in (q, k, v))                 # [N, H, d]
        rep_k, rep_v, _ = reference.condense_gqa(kb, vb, qb, window=window, group=group, scale=scale,
                                                 key_mode=key_mode)
        outs.append(_attend(qb, torch.cat((rep_k, kb)), torch.cat((rep_v, vb)), rep_k.shape[0], window, group,
                            scale, mass_bias))
    return torch.stack(outs)


def _attend(q, keys, values, reps, window, group, scale, mass_bias):
    n, hq, _ = q.shape
    per = hq // keys.shape[1]
    q_idx = torch.arange(n)[:, None]
    kv_idx = torch.arange(keys.shape[0])[None, :]
    mask = reference.lca_mask_mod(reps, window, group)(0, 0, q_idx, kv_idx)
    out = torch.empty(hq, n, values.shape[-1], dtype=q.dtype)
    for h in range(hq):
        logits = q[:, h] @ keys[:, h // per].T * scale
        if mass_bias:
            logits[:, :reps] += math.log(group)
        out[h] = logits.masked_fill(~mask, float("-inf")).softmax(-1) @ values[:, h // per]
    return out


def random_gqa(b, hq, hkv, n, d, dtype=torch.float64):
    return (torch.randn(b, hq, n, d, dtype=dtype), torch.randn(b, hkv, n, d, dtype=dtype),
            torch.randn(b, hkv, n, d, dtype=dtype))


@pytest.mark.parametrize("window,group", [(0, 1), (0, 4), (3, 2), (5, 4), (8, 3)])
@pytest.mark.parametrize("key_mode", ["pooled", "anchor"])
def test_gqa_matches_reference(window, group, key_mode):
    d = 8
    for n in (window + group - 1, window + group, window + 3 * group + 1):
        if n < 1:
            continue
        q, k, v = random_gqa(2, 4, 2, n, d)
        scale = 1 / math.sqrt(d)
        for mass_bias in (False, True):
            got = lca_attention(q, k, v, window=window, group=group, key_mode=key_mode, mass_bias=mass_bias,
                                impl="dense")
            want = reference_gqa(q, k, v, window=window, group=group, scale=scale, key_mode=key_mode,
                                 mass_bias=mass_bias)
            # the reference condenses in fp32 as the spec says; this path keeps float64 inputs in float64
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_float32_matches_float64():
    q, k, v = random_gqa(1, 4, 1, 40, 16, torch.float64)
    want = lca_attention(q, k, v, window=8, group=4)
    got = lca_attention(q.float(), k.float(), v.float(), window=8, group=4)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)


def test_mla_matches_absorbed_reference():
    """Decompressed per-head keys [W_UK c ; k^R] equal the spec's absorbed form over [c ; k^R]."""
    torch.manual_seed(1)
    heads, dc, dn, dr, dv, n, window, group = 3, 12, 6, 4, 5, 29, 5, 4
    c = torch.randn(n, dc, dtype=torch.float64)
    k_rope = torch.randn(n, dr, dtype=torch.float64)
    w_uk = torch.randn(heads, dn, dc, dtype=torch.float64) / 3
    w_uv = torch.randn(heads, dv, dc, dtype=torch.float64) / 3
    q_nope = torch.randn(n, heads, dn, dtype=torch.float64)
    q_rope = torch.randn(n, heads, dr, dtype=torch.float64)
    scale = 1 / math.sqrt(dn + dr)
    for mass_bias in (False, True):
        k = torch.cat((torch.einsum("hnc,tc->htn", w_uk, c), k_rope[None].expand(heads, n, dr)), -1)[None]
        v = torch.einsum("hvc,tc->htv", w_uv, c)[None]
        q = torch.cat((q_nope, q_rope), -1).transpose(0, 1)[None]
        got = lca_attention(q, k, v, window=window, group=group, scale=scale, mla_rope_dim=dr, mass_bias=mass_bias)

        absorbed = torch.einsum("hnc,thn->thc", w_uk, q_nope)                    # q~ [N, H, dc]
        rep_c, rep_r, _ = reference.condense_mla(c, k_rope, absorbed.sum(1).float(), heads, window=window, group=group,
                                                 scale=scale)
        reps = rep_c.shape[0]
        keys = torch.cat((torch.cat((rep_c, c)), torch.cat((rep_r, k_rope))), -1)[:, None]   # [reps + N, 1, dc + dr]
        latent_out = _attend(torch.cat((absorbed, q_rope), -1), keys, keys[..., :dc], reps, window, group, scale,
                             mass_bias)
        want = torch.einsum("hvc,htc->htv", w_uv, latent_out)[None]
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)   # the reference condenses in fp32


def test_no_group_condensed_is_full_attention():
    for window, group in ((6, 4), (0, 5), (10, 1)):
        n = window + group - 1
        q, k, v = random_gqa(2, 4, 2, n, 8)
        torch.testing.assert_close(lca_attention(q, k, v, window=window, group=group), full_attention(q, k, v))
        # one more token closes group 0, which must change the output (unless g = 1)
        q, k, v = random_gqa(1, 4, 2, n + 1, 8)
        if group > 1:
            assert not torch.allclose(lca_attention(q, k, v, window=window, group=group), full_attention(q, k, v))


@pytest.mark.parametrize("window", [0, 3, 7])
def test_group_one_is_full_attention(window):
    q, k, v = random_gqa(2, 6, 3, 23, 8)
    for key_mode in ("pooled", "anchor"):
        torch.testing.assert_close(lca_attention(q, k, v, window=window, group=1, key_mode=key_mode),
                                   full_attention(q, k, v))


def test_baselines():
    """pool='drop' is a sliding window of w..w+g-1 raw tokens; pool='anchor' uses the anchors' own k/v."""
    window, group, n = 4, 3, 20
    q, k, v = random_gqa(1, 2, 1, n, 8)
    scale = 1 / math.sqrt(8)
    dropped = lca_attention(q, k, v, window=window, group=group, pool="drop")
    mask = visibility(n, 0, window, group)
    logits = (q @ k.transpose(2, 3) * scale).masked_fill(~mask, float("-inf"))
    torch.testing.assert_close(dropped, logits.softmax(-1) @ v)
    assert all(window <= int(row.sum()) <= window + group - 1 for row in mask[window:])

    anchored = lca_attention(q, k, v, window=window, group=group, pool="anchor")
    _, _, anchors = reference.condense_gqa(k[0].transpose(0, 1), v[0].transpose(0, 1), q[0].transpose(0, 1),
                                           window=window, group=group, scale=scale)
    m = condensed_groups(n, window, group)
    keys = torch.cat((k[0, 0, anchors[:, 0]], k[0, 0]))
    values = torch.cat((v[0, 0, anchors[:, 0]], v[0, 0]))
    logits = (q[0] @ keys.T * scale).masked_fill(~visibility(n, m, window, group), float("-inf"))
    torch.testing.assert_close(anchored[0], logits.softmax(-1) @ values)
    assert not torch.allclose(anchored, dropped)


def test_representatives_are_convex():
    from lca.attention import condense

    q, k, v = random_gqa(1, 2, 1, 30, 4)
    _, rep_v, anchors = condense(q, k, v, window=2, group=4, scale=0.5)
    for j in range(rep_v.shape[2]):
        group_v = v[0, 0, 4 * j: 4 * j + 4]
        assert (rep_v[0, 0, j] <= group_v.max(0).values + 1e-12).all()
        assert (rep_v[0, 0, j] >= group_v.min(0).values - 1e-12).all()
        assert 4 * j <= int(anchors[0, 0, j]) < 4 * j + 4


@pytest.mark.parametrize("mla", [False, True])
def test_gradcheck(mla):
    torch.manual_seed(2)
    n, d = 11, 6
    q = torch.randn(1, 4, n, d, dtype=torch.float64, requires_grad=True)
    k = torch.randn(1, 2, n, d, dtype=torch.float64, requires_grad=True)
    v = torch.randn(1, 2, n, 3, dtype=torch.float64, requires_grad=True)
    options = dict(window=2, group=3, mla_rope_dim=2 if mla else None, mass_bias=True)
    assert torch.autograd.gradcheck(lambda q, k, v: lca_attention(q, k, v, **options), (q, k, v))
    # the pooling weights carry gradient into the keys of condensed groups through the summary queries
    lca_attention(q, k, v, **options).sum().backward()
    assert q.grad[:, :, 2:5].abs().sum() > 0 and k.grad[:, :, 0:3].abs().sum() > 0


def test_flex_matches_dense():
    flex = pytest.importorskip("torch.nn.attention.flex_attention")
    assert flex is not None
    q, k, v = random_gqa(2, 4, 2, 37, 16, torch.float32)
    for mass_bias in (False, True):
        for pool in ("softmax", "anchor", "drop"):
            options = dict(window=8, group=4, pool=pool, mass_bias=mass_bias)
            torch.testing.assert_close(lca_attention(q, k, v, impl="flex", **options),
                                       lca_attention(q, k, v, impl="dense", **options), rtol=1e-4, atol=1e-4)
    # MLA's layout: the rope channels at the end of the key, a value width unlike the key's
    q, k, v = torch.randn(1, 4, 45, 16), torch.randn(1, 4, 45, 16), torch.randn(1, 4, 45, 8)
    options = dict(window=6, group=5, mla_rope_dim=4, score="full")
    torch.testing.assert_close(lca_attention(q, k, v, impl="flex", **options),
                               lca_attention(q, k, v, impl="dense", **options), rtol=1e-4, atol=1e-4)


def test_bad_arguments():
    q, k, v = random_gqa(1, 2, 1, 8, 4)
    for kwargs, name in ((dict(group=0), "group"), (dict(window=-1), "window"), (dict(key_mode="x"), "key_mode"),
                         (dict(pool="x"), "pool"), (dict(score="x"), "score"), (dict(impl="x"), "impl"),
                         (dict(mla_rope_dim=4), "mla_rope_dim")):
        with pytest.raises(ValueError, match=name):
            lca_attention(q, k, v, **kwargs)
    with pytest.raises(ValueError, match="length"):
        lca_attention(q[:, :, :3], k, v)
    with pytest.raises(ValueError, match="multiple"):
        lca_attention(torch.randn(1, 3, 8, 4), torch.randn(1, 2, 8, 4), torch.randn(1, 2, 8, 4))


def test_staircase_per_query():
    """Section 4 read literally, one query at a time: representatives j < m(t+1), raw positions
    [g m(t+1), t], one softmax (independent of both masks)."""
    window, group, n, d = 5, 3, 26, 8
    q, k, v = random_gqa(1, 2, 1, n, d)
    scale = 1 / math.sqrt(d)
    rep_k, rep_v, _ = reference.condense_gqa(k[0].transpose(0, 1), v[0].transpose(0, 1), q[0].transpose(0, 1),
                                             window=window, group=group, scale=scale)
    got = lca_attention(q, k, v, window=window, group=group)
    for t in range(n):
        m = condensed_groups(t + 1, window, group)
        keys = torch.cat((rep_k[:m, 0], k[0, 0, group * m: t + 1]))
        values = torch.cat((rep_v[:m, 0], v[0, 0, group * m: t + 1]))
        assert window <= t + 1 - group * m <= window + group - 1 or m == 0
        for h in range(2):
            want = (q[0, h, t] @ keys.T * scale).softmax(-1) @ values
            torch.testing.assert_close(got[0, h, t], want, rtol=1e-5, atol=1e-5)
