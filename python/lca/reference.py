"""lca-spec.md in plain PyTorch (any device), written from the spec: the
representatives of sections 3 and 5, the visibility rule of section 4 as a
FlexAttention mask, and the LCA prefill built from those parts. The baseline
`bench/prefill.py` measures against, and a check for the CUDA ops."""

import torch

from .ops import condensed_groups


def rope_rotate(x, pos, theta=10000.0):
    """Rot(pos) x, Llama/Qwen2 half-split; x [..., d], pos broadcastable to x[..., 0]."""
    d = x.shape[-1]
    inv_freq = theta ** (-torch.arange(0, d // 2, device=x.device, dtype=torch.float64) * 2.0 / d)
    angle = pos.to(torch.float64)[..., None] * inv_freq
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2:]
    return torch.cat((x1 * cos - x2 * sin, x2 * cos + x1 * sin), dim=-1)


def condense_gqa(k, v, q, *, window, group, scale, rope_theta=10000.0, key_mode="pooled"):
    """Section 5 for every group closed before N = k.shape[0]: (rep_k, rep_v, anchors) in k's dtype.
    k (rotated), v: [N, Hkv, d]; q (rotated): [N, Hq, d]."""
    n, hkv, d = k.shape
    per = q.shape[1] // hkv
    m = condensed_groups(n, window, group)
    if m == 0:
        return k.new_empty((0, hkv, d)), v.new_empty((0, hkv, d)), torch.empty((0, hkv), dtype=torch.long)
    summed = q.float().view(n, hkv, per, d).sum(2)                                     # per position
    s_j = summed[window: window + m * group].view(m, group, hkv, d).sum(1)             # S_j = [jg + w, jg + w + g)
    kg = k[: m * group].float().view(m, group, hkv, d)
    vg = v[: m * group].float().view(m, group, hkv, d)
    scores = torch.einsum("mhd,mghd->mhg", s_j, kg) * (scale / (group * per))
    alpha = scores.softmax(-1)
    anchor = scores.argmax(-1)                                                          # first maximum on ties
    anchor_pos = torch.arange(m, device=k.device)[:, None] * group + anchor
    rep_v = torch.einsum("mhg,mghd->mhd", alpha, vg)
    if key_mode == "anchor":
        rep_k = kg.gather(1, anchor[:, None, :, None].expand(m, 1, hkv, d)).squeeze(1)
    else:
        pos = torch.arange(m * group, device=k.device).view(m, group, 1)
        unrotated = rope_rotate(kg, -pos, rope_theta)
        rep_k = rope_rotate(torch.einsum("mhg,mghd->mhd", alpha, unrotated), anchor_pos, rope_theta)
    return rep_k.to(k.dtype), rep_v.to(v.dtype), anchor_pos


def condense_mla(latent, rope_key, summary, heads, *, window, group, scale):
    """Section 3 (score = latent): (rep_latent, rep_rope_key, anchors). summary: per position
    sum over heads of the absorbed queries, [N, d_c] fp32."""
    n, dc = latent.shape
    m = condensed_groups(n, window, group)
    s_j = summary[window: window + m * group].view(m, group, dc).sum(1)
    cg = latent[: m * group].float().view(m, group, dc)
    scores = torch.einsum("md,mgd->mg", s_j, cg) * (scale / (group * heads))
    alpha = scores.softmax(-1)
    anchor = scores.argmax(-1)
    rep_latent = torch.einsum("mg,mgd->md", alpha, cg)
    rep_rope = rope_key[: m * group].view(m, group, -1)[torch.arange(m, device=latent.device), anchor]
    return rep_latent.to(latent.dtype), rep_rope, torch.arange(m, device=latent.device) * group + anchor


def lca_mask_mod(reps, window, group):
    """Section 4 over keys [representatives (reps of them) ; raw positions 0..]: for FlexAttention."""

    def mask_mod(b, h, q_idx, kv_idx):
        m = torch.where(q_idx + 1 > window, (q_idx + 1 - window) // group, 0)
        raw = kv_idx - reps
        return torch.where(kv_idx < reps, kv_idx < m, (raw >= group * m) & (raw <= q_idx))

    return mask_mod
