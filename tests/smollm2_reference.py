#!/usr/bin/env python3
"""SmolLM2-135M logits from lca against a float64 numpy forward pass that
works the way llama.cpp does: on the GGUF weights as stored (q/k rows in the
converter's permuted order) with llama.cpp's interleaved RoPE (pairs 2i, 2i+1).
lca un-permutes the rows and rotates half-split pairs (i, i + d/2); the two
agree only if the un-permutation is exactly the converter's inverse.
Tensors are dequantised by the gguf package. Exits 77 (ctest: Skipped) without
gguf/numpy or the model file.

usage: smollm2_reference.py PATH_TO_model_logits
"""
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import gguf
except ImportError as e:
    print(f"SKIPPED: gguf/numpy not importable ({e})")
    sys.exit(77)

path = os.environ.get("LCA_SMOLLM2_GGUF") or os.path.expanduser("~/.cache/lca/SmolLM2-135M-Instruct.Q4_1.gguf")
if not os.path.exists(path):
    print(f"SKIPPED: {path} not found (run scripts/get-smollm2.sh or set LCA_SMOLLM2_GGUF)")
    sys.exit(77)

reader = gguf.GGUFReader(path)
field = lambda k: reader.fields[k].contents()
tensors = {t.name: t for t in reader.tensors}


def weight(name):
    t = tensors[name]
    return gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float64)


n_layer = field("llama.block_count")
n_head = field("llama.attention.head_count")
n_kv = field("llama.attention.head_count_kv")
d_model = field("llama.embedding_length")
hd = d_model // n_head
theta = float(field("llama.rope.freq_base"))
eps = float(field("llama.attention.layer_norm_rms_epsilon"))
ids = [504, 3575, 282, 4649, 314, 12, 1116, 8]  # "The capital of France is", then arbitrary tokens
T = len(ids)


def rms_norm(x, w):
    return x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps) * w


def rope_interleaved(x):  # x [T, heads, hd]; llama.cpp LLAMA_ROPE_TYPE_NORM
    out = x.copy()
    for i in range(hd // 2):
        freq = theta ** (-2.0 * i / hd)
        a = np.arange(T)[:, None] * freq
        c, s = np.cos(a), np.sin(a)
        x0, x1 = x[:, :, 2 * i], x[:, :, 2 * i + 1]
        out[:, :, 2 * i] = x0 * c - x1 * s
        out[:, :, 2 * i + 1] = x0 * s + x1 * c
    return out


embed = weight("token_embd.weight")
x = embed[ids]
mask = np.triu(np.full((T, T), -np.inf), 1)
for l in range(n_layer):
    p = f"blk.{l}."
    h = rms_norm(x, weight(p + "attn_norm.weight"))
    q = rope_interleaved((h @ weight(p + "attn_q.weight").T).reshape(T, n_head, hd))
    k = rope_interleaved((h @ weight(p + "attn_k.weight").T).reshape(T, n_kv, hd))
    v = (h @ weight(p + "attn_v.weight").T).reshape(T, n_kv, hd)
    o = np.zeros((T, n_head, hd))
    for head in range(n_head):
        g = head // (n_head // n_kv)
        s = q[:, head] @ k[:, g].T / np.sqrt(hd) + mask
        s = np.exp(s - s.max(axis=1, keepdims=True))
        o[:, head] = (s / s.sum(axis=1, keepdims=True)) @ v[:, g]
    x = x + o.reshape(T, -1) @ weight(p + "attn_output.weight").T
    h = rms_norm(x, weight(p + "ffn_norm.weight"))
    gate = h @ weight(p + "ffn_gate.weight").T
    up = h @ weight(p + "ffn_up.weight").T
    x = x + (gate / (1 + np.exp(-gate)) * up) @ weight(p + "ffn_down.weight").T
out_w = weight("output.weight") if "output.weight" in tensors else embed
expected = rms_norm(x, weight("output_norm.weight")) @ out_w.T

with tempfile.TemporaryDirectory() as tmp:
    out = os.path.join(tmp, "logits.f32")
    r = subprocess.run([sys.argv[1], path, ",".join(map(str, ids)), out], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr)
        sys.exit(1)
    got = np.fromfile(out, dtype=np.float32).reshape(T, -1)

rel = np.max(np.abs(got - expected)) / np.max(np.abs(expected))
same_argmax = bool(np.all(got.argmax(axis=1) == expected.argmax(axis=1)))
print(f"SmolLM2 {T} positions: max |lca - reference| / max |reference| = {rel:.2e}, argmax equal: {same_argmax}")
if rel > 1e-4 or not same_argmax:
    print("FAIL")
    sys.exit(1)
print("ok")
