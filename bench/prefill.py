#!/usr/bin/env python3
"""bench/prefill: one attention layer's prefill at batch 1, bf16, on one GPU.

For each shape and context it times, in the same run:
  full (ours)         our prefill kernel with the no-group policy (causal)
  full (SDPA)         torch scaled_dot_product_attention, best of its backends
  LCA (ours)          condense (our kernels; MLA: summary and representative
                      decompression by torch GEMMs) + our prefill kernel
  LCA (FlexAttention) condense in torch (lca.reference, from the spec) +
                      compiled flex_attention over [reps ; raw] with the
                      section-4 mask
checks that the two LCA outputs agree (and the two full ones), and reports
TFLOP/s against the bf16 GEMM ceiling and copy bandwidth measured in this run.
Medians of 5-100 runs timed with CUDA events, after warm-up. Prints a table, writes JSON.

    python3 bench/prefill.py --out prefill.json [--contexts 8192,32768] [--shapes gqa,mla,minicpm3]
"""

import argparse
import json
import math
import pathlib
import sys
import warnings

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.nn.attention.flex_attention import create_block_mask, flex_attention

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "python"))
from lca import ops, reference  # noqa: E402

warnings.filterwarnings("ignore")  # SDPA prints a warning for every backend that declines a shape
W, G = 1024, 16
SHAPES = {
    # name: (kind, q heads, kv heads, d_qk, d_v, d_latent, d_rope)
    "gqa": ("gqa", 28, 4, 128, 128, 0, 0),                 # Qwen2.5-7B
    "mla": ("mla", 16, 16, 192, 128, 512, 64),             # DeepSeek-V2-Lite, decompressed K/V
    "minicpm3": ("mla", 40, 40, 96, 64, 256, 32),          # MiniCPM3-4B, decompressed K/V
}
NAMES = {"gqa": "Qwen2.5-7B GQA 28/4 d128", "mla": "DeepSeek-V2-Lite MLA", "minicpm3": "MiniCPM3-4B MLA"}
flex = torch.compile(flex_attention, dynamic=False)


def median_ms(fn, budget_ms):
    """Median of at least 5 timed runs (more while they fit in budget_ms), after two warm-up runs."""
    fn(), fn()
    torch.cuda.synchronize()
    times = []
    while len(times) < 5 or (sum(times) < budget_ms and len(times) < 100):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end))
    return sorted(times)[len(times) // 2]


def rel(a, b):
    a, b = a.float(), b.float()
    if not torch.isfinite(a).all():
        return math.inf
    return ((a - b).norm() / b.norm()).item()


def visible_pairs(n, window, group):
    t = torch.arange(n, dtype=torch.float64)
    if window < 0:
        return float((t + 1).sum())
    m = torch.where(t + 1 > window, torch.div(t + 1 - window, group, rounding_mode="floor"), torch.zeros_like(t))
    return float((m + t + 1 - group * m).sum())


def ceilings():
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    gemm = 2 * 8192**3 / (median_ms(lambda: a @ b, 400) * 1e-3) / 1e12
    x = torch.randn(1 << 29, device="cuda", dtype=torch.bfloat16)  # 1 GiB
    y = torch.empty_like(x)
    copy = 2 * x.numel() * 2 / (median_ms(lambda: y.copy_(x), 400) * 1e-3) / 1e12
    return gemm, copy


def sdpa_best(q, k, v, scale, budget):
    """Causal SDPA over [1, H, N, d] views, kv heads expanded beforehand (outside the timing)."""
    per = q.shape[1] // k.shape[1]
    q4 = q.transpose(0, 1).unsqueeze(0)
    k4 = k.repeat_interleave(per, dim=1).transpose(0, 1).unsqueeze(0)
    v4 = v.repeat_interleave(per, dim=1).transpose(0, 1).unsqueeze(0)
    best, out = None, None
    for backend in (SDPBackend.CUDNN_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
        try:
            with sdpa_kernel(backend):
                fn = lambda: F.scaled_dot_product_attention(q4, k4, v4, is_causal=True, scale=scale)  # noqa: E731
                o = fn()
                t = median_ms(fn, budget)
        except RuntimeError:
            continue
        if best is None or t < best[1]:
            best, out = (backend.name, t), o
    return best, out[0].transpose(0, 1)


def flex_lca(q, keys, values, reps, scale):
    n = q.shape[0]
    mask = create_block_mask(reference.lca_mask_mod(reps, W, G), 1, 1, n, keys.shape[0], device="cuda",
                             _compile=True)
    gqa = q.shape[1] != keys.shape[1]
    q4, k4, v4 = (t.transpose(0, 1).unsqueeze(0) for t in (q, keys, values))
    return lambda: flex(q4, k4, v4, block_mask=mask, scale=scale, enable_gqa=gqa)[0].transpose(0, 1)


def run_case(shape, n, budget):
    kind, hq, hkv, dqk, dv, dc, dr = SHAPES[shape]
    torch.manual_seed(n)
    scale = 1.0 / math.sqrt(dqk)
    bf = dict(device="cuda", dtype=torch.bfloat16)
    row = {"shape": shape, "context": n}
    if kind == "gqa":
        q, k, v = torch.randn(n, hq, dqk, **bf), torch.randn(n, hkv, dqk, **bf), torch.randn(n, hkv, dv, **bf)

        def ours_lca():
            return ops.lca_prefill_gqa(q, k, v, window=W, group=G, scale=scale)

        def torch_reps():
            return reference.condense_gqa(k, v, q, window=W, group=G, scale=scale)[:2]

        def decompress(reps):
            return reps
    else:
        # Latents after the layer's RMSNorm, rope keys, per-head nope/rope queries, W_UK / W_UV.
        dn = dqk - dr
        c = torch.randn(n, dc, **bf)
        kr = torch.randn(n, dr, **bf)
        q = torch.randn(n, hq, dqk, **bf)
        w_uk = torch.randn(hq, dn, dc, **bf) / math.sqrt(dc)
        w_uv = torch.randn(hq, dv, dc, **bf) / math.sqrt(dc)
        # Decompressed per-head K/V of the raw tokens: the layer's work for full and LCA alike.
        k = torch.cat((torch.einsum("hnc,tc->thn", w_uk, c), kr[:, None, :].expand(n, hq, dr)), dim=-1).contiguous()
        v = torch.einsum("hvc,tc->thv", w_uv, c).contiguous()

        def summary():  # per position: sum over heads of the absorbed queries W_UK[h]^T q^C (bf16 GEMM)
            return torch.einsum("thn,hnc->tc", q[..., :dn], w_uk).float()

        def decompress(reps):
            rl, rr = reps
            rk = torch.cat((torch.einsum("hnc,mc->mhn", w_uk, rl), rr[:, None, :].expand(-1, hq, dr)), -1)
            return rk.contiguous(), torch.einsum("hvc,mc->mhv", w_uv, rl).contiguous()

        def ours_lca():
            rl, rr, _ = ops.condense_mla(c, kr, summary(), hq, scale=scale, window=W, group=G)
            rk, rv = decompress((rl, rr))
            return ops.prefill(q, k, v, rk, rv, window=W, group=G, scale=scale)

        def torch_reps():
            return decompress(reference.condense_mla(c, kr, summary(), hq, window=W, group=G, scale=scale)[:2])

    # Full attention: ours and SDPA.
    full = lambda: ops.full_attention(q, k, v, scale=scale)  # noqa: E731
    out_full = full()
    row["full_ours_ms"] = median_ms(full, budget)
    (row["sdpa_backend"], row["full_sdpa_ms"]), out_sdpa = sdpa_best(q, k, v, scale, budget)
    row["full_rel_err"] = rel(out_full, out_sdpa)
    del out_sdpa

    # LCA: ours and FlexAttention (torch condense + flex over [reps ; raw]).
    out_lca = ours_lca()
    row["lca_ours_ms"] = median_ms(ours_lca, budget)
    try:
        rk, rv = torch_reps()
        keys, values = torch.cat((rk, k)), torch.cat((rv, v))
        flex_fn = flex_lca(q, keys, values, rk.shape[0], scale)
        out_flex = flex_fn()
        t_reps = median_ms(torch_reps, budget)
        row["lca_flex_ms"] = t_reps + median_ms(flex_fn, budget)
        row["lca_rel_err"] = rel(out_lca, out_flex)
    except Exception as e:  # FlexAttention refuses some head dims; the row says so
        print(f"  flex_attention failed for {shape} at {n}: {type(e).__name__}: {str(e)[:200]}", flush=True)
        row["lca_flex_ms"], row["lca_rel_err"], row["flex_error"] = math.nan, math.nan, str(e)[:500]

    flop = 2 * (dqk + dv) * hq
    row["full_flop"] = visible_pairs(n, -1, 1) * flop
    row["lca_flop"] = visible_pairs(n, W, G) * flop
    return row


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="prefill.json")
    ap.add_argument("--contexts", default="8192,32768,65536,131072")
    ap.add_argument("--shapes", default="gqa,mla,minicpm3")
    ap.add_argument("--budget-ms", type=int, default=300, help="timing budget per measurement")
    args = ap.parse_args()

    device = torch.cuda.get_device_name()
    gemm, copy = ceilings()
    print(f"device: {device}; measured ceilings: bf16 GEMM {gemm:.0f} TFLOP/s, copy {copy:.2f} TB/s", flush=True)
    hdr = (f"{'shape':26} {'ctx':>6} | {'full ours':>9} {'SDPA':>9} {'ours/SDPA':>9} | {'LCA ours':>9} {'LCA flex':>9}"
           f" {'flex/ours':>9} | {'SDPA/LCA':>8} | {'TF/s full':>9} {'TF/s LCA':>8} | {'err full':>8} {'err LCA':>8}")
    print(hdr + "\n" + "-" * len(hdr), flush=True)
    rows = []
    for shape in args.shapes.split(","):
        for n in (int(x) for x in args.contexts.split(",")):
            r = run_case(shape, n, args.budget_ms)
            r["full_tflops"] = r["full_flop"] / (r["full_ours_ms"] * 1e-3) / 1e12
            r["lca_tflops"] = r["lca_flop"] / (r["lca_ours_ms"] * 1e-3) / 1e12
            rows.append(r)
            print(f"{NAMES[shape]:26} {n:>6} | {r['full_ours_ms']:9.3f} {r['full_sdpa_ms']:9.3f} "
                  f"{r['full_ours_ms'] / r['full_sdpa_ms']:8.2f}x | {r['lca_ours_ms']:9.3f} {r['lca_flex_ms']:9.3f} "
                  f"{r['lca_flex_ms'] / r['lca_ours_ms']:8.2f}x | {r['full_sdpa_ms'] / r['lca_ours_ms']:7.1f}x | "
                  f"{r['full_tflops']:9.1f} {r['lca_tflops']:8.1f} | {r['full_rel_err']:8.1e} {r['lca_rel_err']:8.1e}",
                  flush=True)
            torch.cuda.empty_cache()
            json.dump({"device": device, "gemm_tflops": gemm, "copy_tbps": copy, "window": W, "group": G,
                       "rows": rows}, open(args.out, "w"), indent=2)  # after every row: a cut run keeps its rows
    print(f"times in ms (median); SDPA = best backend ({', '.join(sorted({r['sdpa_backend'] for r in rows}))}); "
          f"TF/s = visible-pair FLOPs of our kernels / time, against {gemm:.0f} measured")


if __name__ == "__main__":
    main()
