#!/usr/bin/env python3
"""lca's GGUF reader against the gguf Python package (llama.cpp's gguf-py).

Writes a GGUF file with gguf.GGUFWriter (metadata of every value type; F32,
F16, BF16, Q8_0, Q4_0 and Q4_1 tensors quantised by gguf.quants; one tensor
of every other ggml type as raw bytes), runs gguf_dump on it, and checks that
metadata, tensor types, shapes and byte sizes agree and that every readable
tensor dequantises to exactly gguf.quants.dequantize's values. With the
SmolLM2 GGUF present (LCA_SMOLLM2_GGUF or ~/.cache/lca), does the same for
a few of its tensors. Exits 77 (ctest: Skipped) when gguf or numpy is missing.

usage: gguf_crosscheck.py PATH_TO_gguf_dump
"""
import json
import os
import subprocess
import sys
import tempfile

try:
    import numpy as np
    import gguf
    from gguf import GGMLQuantizationType as Q
except ImportError as e:
    print(f"SKIPPED: the gguf Python package is not importable ({e}); pip install gguf numpy")
    sys.exit(77)

READABLE = {Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1}
failures = []


def check(cond, what):
    if not cond:
        failures.append(what)
        print("FAIL:", what)


def dump(tool, path, out_dir, names=()):
    r = subprocess.run([tool, path, out_dir, *names], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr)
        sys.exit(1)
    return json.loads(r.stdout)


def compare_tensors(ours, reader, out_dir, only=None):
    by_name = {t["name"]: t for t in ours["tensors"]}
    for t in reader.tensors:
        if only is not None and t.name not in only:
            continue
        mine = by_name.get(t.name)
        check(mine is not None, f"{t.name}: missing from lca's listing")
        if mine is None:
            continue
        block, type_bytes = gguf.GGML_QUANT_SIZES[t.tensor_type]
        check(mine["type"] == t.tensor_type.name, f"{t.name}: type {mine['type']} vs {t.tensor_type.name}")
        check(mine["ne"] == [int(d) for d in t.shape], f"{t.name}: ne {mine['ne']} vs {list(t.shape)}")
        check(mine["bytes"] == int(t.n_bytes), f"{t.name}: {mine['bytes']} bytes vs {t.n_bytes}")
        check(mine["bytes"] == int(np.prod(t.shape)) // block * type_bytes, f"{t.name}: byte size vs GGML_QUANT_SIZES")
        if t.tensor_type not in READABLE:
            continue
        expected = gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32).reshape(-1)
        got = np.fromfile(os.path.join(out_dir, t.name + ".f32"), dtype=np.float32)
        check(got.shape == expected.shape, f"{t.name}: {got.shape} values vs {expected.shape}")
        if got.shape == expected.shape:
            diff = np.max(np.abs(got - expected) / (np.abs(expected) + 1e-30)) if got.size else 0.0
            check(diff <= 1e-6, f"{t.name} ({t.tensor_type.name}): max relative difference {diff}")


def synthetic(tool, tmp):
    rng = np.random.default_rng(20261126)
    path = os.path.join(tmp, "synthetic.gguf")
    w = gguf.GGUFWriter(path, "llama")
    w.add_uint8("t.u8", 250)
    w.add_int8("t.i8", -5)
    w.add_uint16("t.u16", 65000)
    w.add_int16("t.i16", -1234)
    w.add_uint32("t.u32", 4_000_000_000)
    w.add_int32("t.i32", -7)
    w.add_uint64("t.u64", 2**63 - 1)
    w.add_int64("t.i64", -(2**40))
    w.add_float32("t.f32", 0.25)
    w.add_float64("t.f64", 1e-300)
    w.add_bool("t.bool", True)
    w.add_string("t.str", "héllo wörld")
    w.add_array("t.strs", ["<s>", "Ġthe", "", "日本"])
    w.add_array("t.ints", [1, -2, 3])
    w.add_array("t.floats", [0.5, -1.5])
    for qt in (Q.F32, Q.F16, Q.BF16, Q.Q8_0, Q.Q4_0, Q.Q4_1):
        data = (rng.standard_normal((4, 96)) * rng.uniform(0.01, 3)).astype(np.float32)
        if qt == Q.F32:
            w.add_tensor(f"w.{qt.name}", data)
        elif qt == Q.F16:
            w.add_tensor(f"w.{qt.name}", data.astype(np.float16))
        else:
            w.add_tensor(f"w.{qt.name}", gguf.quants.quantize(data, qt), raw_dtype=qt)
    for qt in Q:  # every other type as raw bytes: types and sizes only
        if qt in READABLE or qt not in gguf.GGML_QUANT_SIZES:
            continue
        block, type_bytes = gguf.GGML_QUANT_SIZES[qt]
        raw = rng.integers(0, 256, size=(2, 2 * type_bytes), dtype=np.uint8)
        w.add_tensor(f"raw.{qt.name}", raw, raw_dtype=qt)  # the shape in bytes
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()

    ours = dump(tool, path, tmp)
    reader = gguf.GGUFReader(path)
    check(ours["version"] == 3, f"version {ours['version']}")
    for key, field in reader.fields.items():
        if key.startswith("GGUF."):
            continue
        check(key in ours["metadata"], f"metadata key {key} missing")
        if key not in ours["metadata"]:
            continue
        expected = field.contents()
        got = ours["metadata"][key]
        if isinstance(expected, float):
            check(abs(got - expected) <= 1e-7 * abs(expected), f"{key}: {got} vs {expected}")
        elif isinstance(expected, list) and expected and isinstance(expected[0], float):
            check(np.allclose(got, expected, rtol=1e-7), f"{key}: {got} vs {expected}")
        else:
            check(got == expected, f"{key}: {got!r} vs {expected!r}")
    compare_tensors(ours, reader, tmp)
    print(f"synthetic: {len(reader.fields)} metadata keys, {len(reader.tensors)} tensors compared")


def smollm2(tool, tmp):
    path = os.environ.get("LCA_SMOLLM2_GGUF") or os.path.expanduser("~/.cache/lca/SmolLM2-135M-Instruct.Q4_1.gguf")
    if not os.path.exists(path):
        print("SmolLM2 GGUF not present: real-file comparison skipped")
        return
    names = ["token_embd.weight", "blk.0.attn_q.weight", "blk.0.attn_norm.weight", "blk.29.ffn_down.weight"]
    ours = dump(tool, path, tmp, names)
    reader = gguf.GGUFReader(path)
    check(ours["metadata"]["tokenizer.ggml.tokens"] == reader.fields["tokenizer.ggml.tokens"].contents(),
          "SmolLM2 tokenizer.ggml.tokens differ")
    check(len(ours["tensors"]) == len(reader.tensors), "SmolLM2 tensor count")
    compare_tensors(ours, reader, tmp, only=set(names))
    print(f"SmolLM2: {len(names)} tensors dequantised and compared")


def main():
    tool = sys.argv[1]
    with tempfile.TemporaryDirectory() as tmp:
        synthetic(tool, tmp)
        smollm2(tool, tmp)
    if failures:
        print(f"{len(failures)} failures")
        sys.exit(1)
    print("gguf cross-check passed")


if __name__ == "__main__":
    main()
