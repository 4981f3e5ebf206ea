#!/usr/bin/env python3
"""The CPU runtime against Hugging Face transformers on tiny random models.

For each architecture transformers provides (Llama, Qwen2, DeepseekV2,
DeepseekV3, MiniCPM3, in several variants: q_lora or not, yarn or longrope
RoPE, greedy, group-limited or noaux_tc routing, interleaved or half-split
rotary pairs), builds a tiny random model, re-draws its weights at scales that
keep logits well spread (transformers' initialiser would make them nearly
flat), saves it with save_pretrained (config.json + safetensors, no
tokenizer), and compares
  - the fp32 logits of every position of a random prompt (model_logits --json,
    full attention, f32 cache) with the model's eager forward: max |diff| /
    max |logit| < 1e-4;
  - 32 greedily generated tokens, token for token, with the runtime's
    prefill + decode (model_logits) and, when given, `lca generate`.
transformers runs on the CPU in float32 (no TF32), eager attention.

Exits 77 (ctest: Skipped) without torch/transformers.

usage: hf_compare.py PATH_TO_model_logits [PATH_TO_lca] [--keep DIR]
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile

try:
    import torch
    import transformers
except ImportError as e:
    print(f"SKIPPED: torch/transformers not importable ({e})")
    sys.exit(77)

STEPS = 32
PROMPT = 20
TOLERANCE = 1e-4


def redraw(model, gen):
    """Weights at scales that keep activations O(1) and logits spread out."""
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() == 1:  # norms around 1, biases around 0
                is_norm = "norm" in name or "layernorm" in name
                p.copy_((1.0 if is_norm else 0.0) + (0.1 if is_norm else 0.3) * torch.randn(p.shape, generator=gen))
            elif "embed_tokens" in name:
                p.copy_(torch.randn(p.shape, generator=gen))
            else:  # [out, in] or experts [E, out, in]: fan-in scaling
                p.copy_(torch.randn(p.shape, generator=gen) * (1.5 / math.sqrt(p.shape[-1])))
        for name, b in model.named_buffers():
            if name.endswith("e_score_correction_bias"):
                b.copy_(0.2 * torch.randn(b.shape, generator=gen))


def common(vocab=97, hidden=64, layers=3, max_pos=128):
    return dict(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, max_position_embeddings=max_pos,
                bos_token_id=None, eos_token_id=None, pad_token_id=None)


def mla(heads=4, q_lora=None, kv_lora=16, nope=8, rope=8, v=12):
    return dict(num_attention_heads=heads, num_key_value_heads=heads, q_lora_rank=q_lora, kv_lora_rank=kv_lora,
                qk_nope_head_dim=nope, qk_rope_head_dim=rope, v_head_dim=v)


def cases():
    """(name, config class name, model class name, kwargs) of what this transformers has."""
    out = []
    out.append(("llama", "LlamaConfig", "LlamaForCausalLM",
                dict(common(), intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                     rope_parameters={"rope_type": "default", "rope_theta": 20000.0}, tie_word_embeddings=False)))
    out.append(("qwen2", "Qwen2Config", "Qwen2ForCausalLM",
                dict(common(), intermediate_size=96, num_attention_heads=4, num_key_value_heads=2,
                     rope_parameters={"rope_type": "default", "rope_theta": 1000000.0}, tie_word_embeddings=True)))
    yarn = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 32,
            "beta_fast": 32.0, "beta_slow": 1.0, "mscale": 1.0, "mscale_all_dim": 0.8}
    moe_v2 = dict(n_routed_experts=6, n_shared_experts=1, num_experts_per_tok=2, moe_intermediate_size=24,
                  first_k_dense_replace=1, routed_scaling_factor=1.5, norm_topk_prob=False)
    out.append(("deepseek_v2_yarn_greedy", "DeepseekV2Config", "DeepseekV2ForCausalLM",
                dict(common(), **mla(), intermediate_size=80, **moe_v2, topk_method="greedy",
                     rope_parameters=yarn, attention_bias=True)))
    out.append(("deepseek_v2_qlora_group_limited", "DeepseekV2Config", "DeepseekV2ForCausalLM",
                dict(common(), **mla(q_lora=24), intermediate_size=80, **moe_v2, topk_method="group_limited_greedy",
                     n_group=3, topk_group=2, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})))
    moe_v3 = dict(n_routed_experts=8, n_shared_experts=2, num_experts_per_tok=3, moe_intermediate_size=24,
                  first_k_dense_replace=1, routed_scaling_factor=2.5, norm_topk_prob=True, n_group=4, topk_group=2)
    for interleave in (True, False):
        out.append((f"deepseek_v3_{'interleaved' if interleave else 'half_split'}", "DeepseekV3Config",
                    "DeepseekV3ForCausalLM",
                    dict(common(), **mla(q_lora=24), intermediate_size=80, **moe_v3, rope_interleave=interleave,
                         rope_parameters=yarn if interleave else {"rope_type": "default", "rope_theta": 10000.0})))
    short = [1.0 + 0.5 * i for i in range(4)]
    out.append(("minicpm3_longrope", "MiniCPM3Config", "MiniCPM3ForCausalLM",
                dict(common(), **mla(q_lora=24), intermediate_size=80, scale_emb=12, scale_depth=1.4,
                     dim_model_base=16, tie_word_embeddings=True,
                     rope_parameters={"rope_type": "longrope", "rope_theta": 10000.0, "factor": 2.0,
                                      "original_max_position_embeddings": 128, "short_factor": short,
                                      "long_factor": [2 * s for s in short]})))
    out.append(("minicpm3_plain", "MiniCPM3Config", "MiniCPM3ForCausalLM",
                dict(common(), **mla(q_lora=24), intermediate_size=80, scale_emb=12, scale_depth=1.4,
                     dim_model_base=16, tie_word_embeddings=False,
                     rope_parameters={"rope_type": "default", "rope_theta": 10000.0})))
    return [c for c in out if hasattr(transformers, c[1]) and hasattr(transformers, c[2])], \
           [c[0] for c in out if not (hasattr(transformers, c[1]) and hasattr(transformers, c[2]))]


def hf_greedy(model, ids, steps):
    seq = list(ids)
    out = []
    with torch.no_grad():
        for _ in range(steps):
            logits = model(torch.tensor([seq])).logits[0, -1]
            out.append(int(torch.argmax(logits)))
            seq.append(out[-1])
    return out


def run_case(name, cfg_cls, model_cls, kwargs, tool, lca, root, seed):
    gen = torch.Generator().manual_seed(seed)
    config = getattr(transformers, cfg_cls)(**kwargs)
    config._attn_implementation = "eager"
    model = getattr(transformers, model_cls)(config).eval()
    redraw(model, gen)
    if config.tie_word_embeddings:
        model.tie_weights()
    folder = os.path.join(root, name)
    model.save_pretrained(folder)
    ids = torch.randint(0, config.vocab_size, (PROMPT,), generator=gen).tolist()

    with torch.no_grad():
        hf_logits = model(torch.tensor([ids])).logits[0].double()
    hf_tokens = hf_greedy(model, ids, STEPS)

    res = subprocess.run([tool, "--json", folder, ",".join(map(str, ids)), str(STEPS)], capture_output=True, text=True)
    if res.returncode != 0:
        return False, f"model_logits failed: {res.stderr.strip()}"
    ours = json.loads(res.stdout)
    our_logits = torch.tensor(ours["logits"], dtype=torch.float64)
    rel = float((our_logits - hf_logits).abs().max() / hf_logits.abs().max())
    problems = []
    if not rel < TOLERANCE:
        problems.append(f"logits rel err {rel:.2e} >= {TOLERANCE:g}")
    if ours["greedy"] != hf_tokens:
        k = next(i for i, (a, b) in enumerate(zip(ours["greedy"], hf_tokens)) if a != b)
        with torch.no_grad():
            top2 = torch.topk(model(torch.tensor([ids + hf_tokens[:k]])).logits[0, -1], 2).values
        problems.append(f"greedy differs at step {k} (ours {ours['greedy'][k]}, hf {hf_tokens[k]}; hf top-2 margin "
                        f"{float(top2[0] - top2[1]):.2e})")
    if lca:
        res = subprocess.run([lca, "generate", "--model", folder, "--prompt-ids", ",".join(map(str, ids)),
                              "--attention", "full", "--dtype", "f32", "--max-new-tokens", str(STEPS),
                              "--ignore-eos"], capture_output=True, text=True)
        cli = [int(t) for t in res.stdout.strip().strip(",").split(",") if t] if res.returncode == 0 else None
        if cli != hf_tokens:
            problems.append(f"lca generate gave {cli if cli is not None else res.stderr.strip()}")
    detail = f"logits rel err {rel:.2e}, greedy {STEPS} tokens " + ("equal" if ours["greedy"] == hf_tokens else "differ")
    return not problems, "; ".join(problems) if problems else detail


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("model_logits")
    ap.add_argument("lca", nargs="?")
    ap.add_argument("--keep", help="write the models into this folder and keep them")
    args = ap.parse_args()
    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    torch.backends.cuda.matmul.allow_tf32 = False
    runnable, missing = cases()
    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    for m in missing:
        print(f"  {m}: not in this transformers, skipped")
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        root = args.keep or tmp
        for i, (name, cfg_cls, model_cls, kwargs) in enumerate(runnable):
            try:
                ok, msg = run_case(name, cfg_cls, model_cls, kwargs, args.model_logits, args.lca, root, 1000 + i)
            except Exception as e:  # a case that cannot even be built is a failure, with its reason
                ok, msg = False, f"{type(e).__name__}: {e}"
            failed += not ok
            print(f"  {'ok  ' if ok else 'FAIL'} {name}: {msg}")
    print(f"{len(runnable) - failed}/{len(runnable)} architectures agree with transformers")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
