"""Differentiable LCA attention (lca-spec.md sections 2 to 5) for training and evaluation.

Forward and backward by autograd: anchors are chosen without gradient (argmax), pooling
weights keep theirs (softmax of the scores), representatives are built from the layer's own
q/k/v, then one softmax over [representatives ; raw window] with the staircase of section 4.

Layouts are Hugging Face's: q [B, Hq, N, d], k [B, Hkv, N, d], v [B, Hkv, N, dv], queries and
keys both at positions 0 .. N-1 (a whole sequence, as in training or a cache-less forward).

GQA: keys are rotated (post-RoPE); Rot is the half-split rotary map of Llama/Qwen2 with the
model's inverse frequencies. MLA: the decompressed form a DeepSeek-V2 attention calls, per head
K = [W_UK c ; k^R] and V = W_UV c, with the last `mla_rope_dim` key channels the shared rope key.
By linearity, pooling the per-head W_UK c and W_UV c with weights shared by all heads is
W_UK c^ and W_UV c^, so this is exactly section 3's absorbed function.

Baselines of the quality study, as options of the same function: pool="anchor" keeps each
group's anchor token's own k/v (no pooling), pool="drop" drops condensed groups (window only).
"""

import math
import warnings

import torch

from .ops import condensed_groups
from .reference import lca_mask_mod

KEY_MODES = ("pooled", "anchor")
POOLS = ("softmax", "anchor", "drop")
SCORES = ("latent", "full")
IMPLS = ("auto", "dense", "flex")

# Sequences at least this long take the FlexAttention path under impl="auto" on CUDA; below it the
# dense path is cheap and avoids a compile.
FLEX_MIN_LENGTH = 2048


def default_inv_freq(head_dim, theta=10000.0, device=None):
    """The default RoPE inverse frequencies theta^(-2i/d), i < d/2, in float64."""
    return theta ** (-torch.arange(0, head_dim // 2, device=device, dtype=torch.float64) * 2.0 / head_dim)


def rotate(x, pos, inv_freq):
    """Rot(pos) x in the half-split convention; x [..., d], pos broadcastable to x[..., 0]."""
    d = x.shape[-1]
    angle = pos.to(torch.float64)[..., None] * inv_freq.to(device=x.device, dtype=torch.float64)
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def _check_options(window, group, key_mode, pool, score, impl):
    if not isinstance(group, int) or group < 1:
        raise ValueError(f"group must be an integer >= 1, got {group!r}")
    if not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an integer >= 0, got {window!r}")
    if key_mode not in KEY_MODES:
        raise ValueError(f"key_mode must be one of {KEY_MODES}, got {key_mode!r}")
    if pool not in POOLS:
        raise ValueError(f"pool must be one of {POOLS}, got {pool!r}")
    if score not in SCORES:
        raise ValueError(f"score must be one of {SCORES}, got {score!r}")
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")


def _check_shapes(q, k, v, mla_rope_dim):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise ValueError(f"q, k, v must be 4-D [B, H, N, d], got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    b, hq, n, d = q.shape
    if k.shape[0] != b or v.shape[0] != b or k.shape[2] != n or v.shape[2] != n:
        raise ValueError(f"k and v must have q's batch and length {b}, {n}, got {tuple(k.shape)}, {tuple(v.shape)} "
                         "(queries must cover the whole sequence from position 0: run without a KV cache)")
    if k.shape[3] != d or v.shape[1] != k.shape[1]:
        raise ValueError(f"k must be [B, Hkv, N, {d}] and v [B, Hkv, N, dv], got {tuple(k.shape)}, {tuple(v.shape)}")
    if hq % k.shape[1] != 0:
        raise ValueError(f"q heads {hq} must be a multiple of kv heads {k.shape[1]}")
    if mla_rope_dim is not None and not 0 < mla_rope_dim < d:
        raise ValueError(f"mla_rope_dim must be in (0, {d}), got {mla_rope_dim!r}")


def condense(q, k, v, *, window, group, scale, key_mode="pooled", pool="softmax", score="latent",
             inv_freq=None, mla_rope_dim=None):
    """Representatives (rep_k [B, Hkv, m, d], rep_v [B, Hkv, m, dv], anchor positions [B, Hkv, m]) of
    the m = m(N) groups closed by N = q.shape[2]; pool="drop" gives none."""
    b, hq, n, d = q.shape
    hkv, dv = k.shape[1], v.shape[3]
    per = hq // hkv
    m = condensed_groups(n, window, group)
    if m == 0 or pool == "drop":
        return k.new_empty((b, hkv, 0, d)), v.new_empty((b, hkv, 0, dv)), torch.empty((b, hkv, 0), dtype=torch.long)
    ct = torch.promote_types(q.dtype, torch.float32)  # scores, softmax and pooled sums in fp32 at least
    summed = q.to(ct).view(b, hkv, per, n, d).sum(2)                                    # per kv head, per position
    summary = summed[:, :, window: window + m * group].reshape(b, hkv, m, group, d).sum(3)  # S_j = [jg+w, jg+w+g)
    kg = k[:, :, : m * group].to(ct).reshape(b, hkv, m, group, d)
    vg = v[:, :, : m * group].to(ct).reshape(b, hkv, m, group, dv)
    if mla_rope_dim is not None:
        # One latent per token: the score sums over all heads, so alpha and the anchor are shared.
        dims = d - mla_rope_dim if score == "latent" else d
        scores = torch.einsum("bhmd,bhmgd->bmg", summary[..., :dims], kg[..., :dims]) * (scale / (group * hq))
        scores = scores[:, None].expand(b, hkv, m, group)
    else:
        scores = torch.einsum("bhmd,bhmgd->bhmg", summary, kg) * (scale / (group * per))
    alpha = scores.softmax(-1)
    with torch.no_grad():
        anchor = scores.argmax(-1)                                                       # first maximum on ties
    anchor_pos = torch.arange(m, device=k.device) * group + anchor
    anchor_k = kg.gather(3, anchor[..., None, None].expand(b, hkv, m, 1, d)).squeeze(3)
    if pool == "anchor":
        anchor_v = vg.gather(3, anchor[..., None, None].expand(b, hkv, m, 1, dv)).squeeze(3)
        return anchor_k.to(k.dtype), anchor_v.to(v.dtype), anchor_pos
    rep_v = torch.einsum("bhmg,bhmgd->bhmd", alpha, vg)
    if mla_rope_dim is not None:
        dims = d - mla_rope_dim
        pooled = torch.einsum("bhmg,bhmgd->bhmd", alpha, kg[..., :dims])
        rep_k = torch.cat((pooled, anchor_k[..., dims:]), dim=-1)
    elif key_mode == "anchor":
        rep_k = anchor_k
    else:
        if inv_freq is None:
            inv_freq = default_inv_freq(d)
        pos = torch.arange(m * group, device=k.device).view(m, group)
        unrotated = rotate(kg, -pos, inv_freq)
        rep_k = rotate(torch.einsum("bhmg,bhmgd->bhmd", alpha, unrotated), anchor_pos, inv_freq)
    return rep_k.to(k.dtype), rep_v.to(v.dtype), anchor_pos


def visibility(n, reps, window, group, device=None):
    """Section 4 as a boolean [N, reps + N] mask over keys [representatives ; raw positions]."""
    t = torch.arange(n, device=device)
    m = torch.where(t + 1 > window, (t + 1 - window) // group, torch.zeros_like(t))
    rep_visible = torch.arange(reps, device=device)[None, :] < m[:, None]
    i = torch.arange(n, device=device)[None, :]
    raw_visible = (i >= group * m[:, None]) & (i <= t[:, None])
    return torch.cat((rep_visible, raw_visible), dim=1)


def _dense(q, keys, values, reps, window, group, scale, mass_bias):
    b, hq, n, _ = q.shape
    per = hq // keys.shape[1]
    keys = keys.repeat_interleave(per, dim=1)
    values = values.repeat_interleave(per, dim=1)
    logits = torch.matmul(q, keys.transpose(2, 3)).to(torch.promote_types(q.dtype, torch.float32)) * scale
    if mass_bias and reps:
        bias = torch.zeros(keys.shape[2], dtype=logits.dtype, device=q.device)
        bias[:reps] = math.log(group)
        logits = logits + bias
    logits = logits.masked_fill(~visibility(n, reps, window, group, q.device), float("-inf"))
    probs = logits.softmax(-1).to(values.dtype)
    return torch.matmul(probs, values)


_compiled_flex = None
_flex_refused = set()      # callers whose FlexAttention call failed once: dense from then on
_block_masks = {}          # one block mask per shape and layout, shared by the layers of a forward


def flex_available():
    try:
        from torch.nn.attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True


def _flex(q, keys, values, reps, window, group, scale, mass_bias):
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    global _compiled_flex
    n, total = q.shape[2], keys.shape[2]
    key = (n, total, reps, window, group, str(q.device))
    block_mask = _block_masks.get(key)
    if block_mask is None:
        if len(_block_masks) > 64:
            _block_masks.clear()
        block_mask = create_block_mask(lca_mask_mod(reps, window, group), None, None, n, total, device=q.device)
        _block_masks[key] = block_mask
    score_mod = None
    if mass_bias and reps:
        log_g = math.log(group)

        def score_mod(s, b, h, q_idx, kv_idx):
            return torch.where(kv_idx < reps, s + log_g, s)

    fn = flex_attention
    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention)
        fn = _compiled_flex
    return fn(q, keys, values, score_mod=score_mod, block_mask=block_mask, scale=scale,
              enable_gqa=q.shape[1] != keys.shape[1])


def lca_attention(q, k, v, *, window=1024, group=16, scale=None, key_mode="pooled", pool="softmax",
                  score="latent", mass_bias=False, rope_theta=10000.0, inv_freq=None, mla_rope_dim=None,
                  impl="auto"):
    """LCA attention output [B, Hq, N, dv] for a whole sequence (see the module docstring).

    key_mode: GQA representative key, "pooled" (pool un-rotated keys, rotate to the anchor) or "anchor".
    pool: "softmax" (LCA), "anchor" (anchor token's own k/v) or "drop" (window only).
    score: MLA only, "latent" (score over the non-rope channels) or "full" (all channels).
    inv_freq: the model's RoPE inverse frequencies (GQA pooled keys); default from rope_theta.
    mla_rope_dim: set for MLA (the rope key's channels at the end of k); None for GQA.
    impl: "dense" (exact masked softmax, O(N^2) memory, any device), "flex" (FlexAttention with a
    block mask; CUDA for training) or "auto" (flex on CUDA for N >= FLEX_MIN_LENGTH when available,
    falling back to dense, with a warning, if the FlexAttention kernels refuse the shapes).
    """
    _check_options(window, group, key_mode, pool, score, impl)
    _check_shapes(q, k, v, mla_rope_dim)
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    if inv_freq is None and mla_rope_dim is None and key_mode == "pooled":
        inv_freq = default_inv_freq(q.shape[-1], rope_theta, q.device)
    rep_k, rep_v, _ = condense(q, k, v, window=window, group=group, scale=scale, key_mode=key_mode, pool=pool,
                               score=score, inv_freq=inv_freq, mla_rope_dim=mla_rope_dim)
    reps = rep_k.shape[2]
    keys = torch.cat((rep_k, k), dim=2)
    values = torch.cat((rep_v, v), dim=2)
    return choose_impl("lca_attention", q, impl,
                       lambda: _flex(q, keys, values, reps, window, group, scale, mass_bias),
                       lambda: _dense(q, keys, values, reps, window, group, scale, mass_bias))


def choose_impl(caller, q, impl, flex, dense):
    """Runs flex() or dense() for impl "flex", "dense" or "auto": flex on CUDA for at least
    FLEX_MIN_LENGTH queries when available, and dense for good, with a warning, once the FlexAttention
    kernels refuse a call of this caller."""
    if (impl == "auto" and q.is_cuda and q.shape[2] >= FLEX_MIN_LENGTH and flex_available()
            and caller not in _flex_refused):
        try:
            return flex()
        except Exception as error:  # a shape or build the FlexAttention kernels refuse
            _flex_refused.add(caller)
            warnings.warn(f"{caller}: FlexAttention failed ({type(error).__name__}: {error}); using the dense path")
    if impl == "flex":
        if not flex_available():
            raise ValueError("impl 'flex' needs torch.nn.attention.flex_attention, which this torch lacks")
        return flex()
    return dense()


def full_attention(q, k, v, *, scale=None):
    """Plain causal softmax attention in the same layout (an oracle for the identities)."""
    n = q.shape[2]
    per = q.shape[1] // k.shape[1]
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    logits = torch.matmul(q, k.repeat_interleave(per, 1).transpose(2, 3)) * scale
    causal = torch.ones(n, n, dtype=torch.bool, device=q.device).tril()
    return torch.matmul(logits.masked_fill(~causal, float("-inf")).softmax(-1), v.repeat_interleave(per, 1))
