#!/usr/bin/env python3
"""Writes the MTLA agreement cases (mtla-spec.md identity 4) under tests/data/.

The PyPI package `mtla` (module MTLA.py, class MultiheadTemporalLatentAttention)
is run in float64 with random weights, in its training-mode forward and in its
incremental decode (prompt then one token at a time, with and without
recompute_prompt_attn). Each case file holds what our reference needs (the
latents after the package's LayerNorm and its rotated rope keys, the query
parts, the up-projections, the hyper-network) and what the package returned;
tests/test_mtla.cpp (MtlaAgreement.*) checks the C++ reference against them.
CI has no PyTorch, so the generated files are committed.

Needs torch and mtla (read at 0.3.2):
    python3 -m venv /tmp/venv && /tmp/venv/bin/pip install torch mtla==0.3.2
    /tmp/venv/bin/python tests/mtla_agreement.py --out tests/data

One deliberate change to the package, so that float64 agreement can be
checked to 1e-10: HyperNetwork.positional_encoding builds PE(k) in float32
whatever the module's dtype (torch.arange(..., dtype=torch.float)), which
perturbs the merge weights by ~1e-7. It is replaced here by the same formula in
float64, which is what mtla-spec.md section 1 defines. The package's RoPE also
runs in float32 (x.float()); that needs no change, because the rotated keys
and queries it produced are captured and handed to our reference as inputs.
"""
import argparse
import json
import math
import os
import sys

import torch

from mtla.MTLA import MultiheadTemporalLatentAttention

DIMS = dict(embed_dim=16, num_heads=2, kv_lora_rank=16, qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5)
LENGTH = 13  # T: not a multiple of 2 or 4, so the last row is a running one
PROMPT = 5  # tokens given at once before decoding one at a time


def positional_encoding_f64(self, T, pos=0):
    """HyperNetwork.positional_encoding in float64 (the package builds it in float32)."""
    d = self.d
    pos = int(pos)
    position = torch.arange(pos, pos + int(T), dtype=torch.float64).unsqueeze(1)
    div_term = torch.exp(torch.arange(0, d, 2, dtype=torch.float64) * (-math.log(10000.0) / d))
    pe = torch.zeros(int(T), d, dtype=torch.float64)
    pe[:, 0::2] = torch.sin(position * div_term)
    pe[:, 1::2] = torch.cos(position * div_term)
    return pe.unsqueeze(0)


def build(s, recompute, seed):
    torch.manual_seed(seed)
    m = MultiheadTemporalLatentAttention(down_rate=s, recompute_prompt_attn=recompute, **DIMS).double().eval()
    with torch.no_grad():  # random weights; the LayerNorm's affine part too, so it is not the identity
        for name, p in m.named_parameters():
            if name.startswith("kv_norm.weight"):
                p.copy_(1.0 + 0.3 * torch.randn_like(p))
            elif p.dim() == 2:
                p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1]))
            else:
                p.copy_(0.3 * torch.randn_like(p))
    m.hypernet_down.positional_encoding = positional_encoding_f64.__get__(m.hypernet_down)
    return m


class Capture:
    """Records what the module computed: the LayerNorm latents, q = wq(x), rotated q_pe and k_pe."""

    def __init__(self, m):
        self.kv_norm, self.q, self.rotated = [], [], []
        m.kv_norm.register_forward_hook(lambda mod, i, o: self.kv_norm.append(o.detach().clone()))
        m.wq.register_forward_hook(lambda mod, i, o: self.q.append(o.detach().clone()))
        rotate = m._apply_rotary_emb_batch

        def recording_rotate(x, freqs_cis):
            y = rotate(x, freqs_cis)
            self.rotated.append(y.detach().clone())
            return y

        m._apply_rotary_emb_batch = recording_rotate


def decode(m, x, pos, recompute):
    """Prompt of PROMPT tokens, then one token per call. Returns outputs [positions, E] and the final cache."""
    state = {}
    q_from = 0 if recompute else PROMPT - 1  # recompute_prompt_attn=False: the prompt call's query is its last token
    outs = [m(x[:, q_from:PROMPT], x[:, :PROMPT], x[:, :PROMPT], position=pos[:, :PROMPT], incremental_state=state)]
    for t in range(PROMPT, LENGTH):
        xt = x[:, t : t + 1]
        outs.append(m(xt, xt, xt, position=pos[:, t : t + 1], incremental_state=state))
    saved = m._get_input_buffer(state)
    cache = torch.cat([saved["prev_kv_t"], saved["prev_k_pe"]], dim=-1)[0]
    return torch.cat(outs, dim=1)[0], cache, q_from


def case(s, seed):
    E, H = DIMS["embed_dim"], DIMS["num_heads"]
    dc, dn, dr, dv = DIMS["kv_lora_rank"], DIMS["qk_nope_head_dim"], DIMS["qk_rope_head_dim"], DIMS["v_head_dim"]
    m = build(s, recompute=False, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    x = torch.randn(1, LENGTH, E, dtype=torch.float64, generator=gen)
    pos = torch.arange(LENGTH, dtype=torch.float32).unsqueeze(0)  # the package's RoPE angles are float32

    cap = Capture(m)
    with torch.no_grad():
        train_out = m(x, x, x, position=pos)[0]  # training-mode forward (incremental_state=None)
    kv_norm, q, (q_pe, k_pe) = cap.kv_norm[0][0], cap.q[0][0].view(LENGTH, H, dn + dr), cap.rotated
    kv_rows = torch.cat([kv_norm, k_pe[0, :, 0]], dim=-1)
    q_nope, q_rope = q[..., :dn], q_pe[0]
    with torch.no_grad():
        w = m.hypernet_down(LENGTH, math.ceil(LENGTH / s), x.device, train=True, T_input=kv_norm.unsqueeze(0))[0]
    merge_weights = torch.diagonal(w)  # row j = i of the training-form weights: w_i, chunk floor(i/s)

    runs = {}
    for recompute in (False, True):
        md = build(s, recompute=recompute, seed=seed)
        capd = Capture(md)
        with torch.no_grad():
            out, cache, q_from = decode(md, x, pos, recompute)
        # Each call recomputes its tokens' latents and rope keys; in a batch of
        # one they differ from the training forward's in the last bits (the
        # LayerNorm by ~1e-16, the float32 RoPE by ~1e-7), so each run keeps its own.
        dec_kv = torch.cat(capd.kv_norm, dim=1)[0]
        dec_q_pe = torch.cat([capd.rotated[i][0] for i in range(0, len(capd.rotated), 2)], dim=0)
        dec_k_pe = torch.cat([capd.rotated[i][0, :, 0] for i in range(1, len(capd.rotated), 2)], dim=0)
        dec_q = torch.cat(capd.q, dim=1)[0].view(-1, H, dn + dr)
        assert dec_q.shape[0] == LENGTH - q_from and dec_q_pe.shape[0] == LENGTH - q_from
        runs[recompute] = dict(q_from=q_from, kv_rows=torch.cat([dec_kv, dec_k_pe], dim=-1), q_nope=dec_q[..., :dn],
                               q_rope=dec_q_pe, out=out, cache=cache)

    wkv_b = m.wkv_b.weight.view(H, dn + dv, dc)
    hn = m.hypernet_down
    lst = lambda t: t.detach().reshape(-1).tolist()
    out = {
        "package": "mtla 0.3.2, MultiheadTemporalLatentAttention, float64",
        "down_rate": s,
        "heads": H, "d_latent": dc, "d_rope": dr, "d_nope": dn, "d_v": dv, "embed_dim": E,
        "length": LENGTH, "prompt": PROMPT,
        "scale": m.softmax_scale,
        "kv_rows": lst(kv_rows),            # [T, d_c + d_r]: LayerNorm latent ; rotated k_pe
        "q_nope": lst(q_nope),              # [T, H, d_n]
        "q_rope": lst(q_rope),              # [T, H, d_r], rotated
        "w_uk": lst(wkv_b[:, :dn]),         # [H, d_n, d_c]
        "w_uv": lst(wkv_b[:, dn:]),         # [H, d_v, d_c]
        "wo": lst(m.wo.weight),             # [E, H d_v], no bias
        "fc_c_weight": lst(hn.fc_c.weight), "fc_c_bias": lst(hn.fc_c.bias),
        "fc_p_weight": lst(hn.fc_p.weight), "fc_p_bias": lst(hn.fc_p.bias),
        "merge_weights": lst(merge_weights),  # [T]
        "train_out": lst(train_out),          # [T, E]
    }
    # Incremental decode, without and with recompute_prompt_attn: queries at
    # positions [q_from, T) (the prompt call's queries, then one per call).
    for name, recompute in (("decode", False), ("recompute", True)):
        r = runs[recompute]
        out[name] = {
            "q_from": r["q_from"],
            "kv_rows": lst(r["kv_rows"]),  # [T, d_c + d_r]
            "q_nope": lst(r["q_nope"]),    # [T - q_from, H, d_n]
            "q_rope": lst(r["q_rope"]),    # [T - q_from, H, d_r]
            "out": lst(r["out"]),          # [T - q_from, E]
            "cache": lst(r["cache"]),      # [ceil(T/s), d_c + d_r]: prev_kv_t ; prev_k_pe after T tokens
        }
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=os.path.join(os.path.dirname(os.path.abspath(__file__)), "data"))
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    for s, seed in ((2, 20260), (4, 20261)):
        path = os.path.join(args.out, f"mtla_agreement_s{s}.json")
        with open(path, "w") as f:
            json.dump(case(s, seed), f, separators=(",", ":"))  # floats as repr: exact round trip
            f.write("\n")
        print(f"wrote {path} ({os.path.getsize(path)} bytes)", file=sys.stderr)


if __name__ == "__main__":
    main()
