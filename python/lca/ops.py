"""The CUDA kernels as torch ops. Layouts are the kernels': q [L, Hq, d_qk],
k [N, Hkv, d_qk], v [N, Hkv, d_v], row-major, bf16 or fp16, on a CUDA device.
Positions are absolute: query l is at q_start + l, raw row r at raw_start + r.
Bad arguments raise ValueError naming the problem."""

import math

import torch

from ._ext import load


def condensed_groups(n: int, window: int, group: int) -> int:
    """m(n) = max(0, floor((n - w) / g)) of lca-spec.md section 2."""
    return 0 if n <= window else (n - window) // group


def _scale(q, scale):
    return 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)


def prefill(q, k, v, rep_k=None, rep_v=None, *, window=1024, group=16, scale=None, q_start=0, raw_start=0,
            mass_bias=False):
    """Queries over [representatives ; raw rows] with the staircase of section 4."""
    if rep_k is None:
        rep_k = q.new_empty((0, k.shape[1], k.shape[2]))
        rep_v = q.new_empty((0, v.shape[1], v.shape[2]))
    return load().prefill(q, k, v, rep_k, rep_v, _scale(q, scale), window, group, q_start, raw_start, mass_bias)


def full_attention(q, k, v, *, scale=None):
    """Causal attention over all rows: the same kernel with the no-group policy."""
    return prefill(q, k, v, window=-1, group=1, scale=scale)


def summary_queries_gqa(q, kv_heads):
    """Per position, the queries summed over each kv head's query heads (fp32)."""
    return load().summary_queries_gqa(q, kv_heads)


def condense_gqa(k, v, summary, q_heads, *, window=1024, group=16, scale=None, rope_theta=10000.0,
                 key_mode="pooled", first=0, count=None, kv_start=0, sum_start=0):
    """Representatives (rep_k, rep_v, anchors) of groups [first, first + count), section 5."""
    if key_mode not in ("pooled", "anchor"):
        raise ValueError(f"key_mode must be 'pooled' or 'anchor', got {key_mode!r}")
    if count is None:
        count = condensed_groups(kv_start + k.shape[0], window, group) - first
    return load().condense_gqa(k, v, summary, q_heads, _scale(k, scale), window, group, key_mode == "anchor",
                               rope_theta, first, count, kv_start, sum_start)


def condense_mla(latent, rope_key, summary, heads, *, scale, window=1024, group=16, score="latent", first=0,
                 count=None, kv_start=0, sum_start=0):
    """Representatives (rep_latent, rep_rope_key, anchors) of groups [first, first + count), section 3."""
    if score not in ("latent", "full"):
        raise ValueError(f"score must be 'latent' or 'full', got {score!r}")
    if count is None:
        count = condensed_groups(kv_start + latent.shape[0], window, group) - first
    return load().condense_mla(latent, rope_key, summary, heads, float(scale), window, group, score == "full",
                               first, count, kv_start, sum_start)


def lca_prefill_gqa(q, k, v, *, window=1024, group=16, scale=None, rope_theta=10000.0, key_mode="pooled",
                    mass_bias=False):
    """One whole GQA prefill from position 0: summary queries, condense, attention."""
    summary = summary_queries_gqa(q, k.shape[1])
    rep_k, rep_v, _ = condense_gqa(k, v, summary, q.shape[1], window=window, group=group, scale=scale,
                                   rope_theta=rope_theta, key_mode=key_mode)
    return prefill(q, k, v, rep_k, rep_v, window=window, group=group, scale=scale, mass_bias=mass_bias)


def device_name() -> str:
    return load().device_name()


__all__ = ["condensed_groups", "prefill", "full_attention", "summary_queries_gqa", "condense_gqa", "condense_mla",
           "lca_prefill_gqa", "device_name", "torch"]
