"""lca.mtla: MTLA's training form in a tiny random DeepSeek-V2 against the spec's token-by-token
recurrence (written here, float64), the `mtla` package's training forward, s = 1 against full
attention over the scaled latents, gradients, checkpoints in the C++ runtime's format, unpatch, and
the fine-tune and evaluation tools with --attention mtla / --methods mtla."""

import copy
import json
import math
import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lca  # noqa: E402
from lca import evaluate, finetune, mtla  # noqa: E402
from lca.attention import visibility as lca_visibility  # noqa: E402
from lca.make_model import make_config, make_model  # noqa: E402
from tiny import text, tiny_folder  # noqa: E402

TENSORS = ("fc_c.weight", "fc_c.bias", "fc_p.weight", "fc_p.bias")


def tiny(seed=3, layers=2, kv_lora_rank=None):
    config = make_config("deepseek_v2", 100, hidden=64, layers=layers, heads=4, intermediate=96, max_positions=256,
                         kv_lora_rank=kv_lora_rank)
    return make_model(config, seed=seed).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


def randomise_hypernets(model, scale=0.5, seed=0):
    """Hyper-network weights larger than nn.Linear's initialisation, so the merge weights spread over (0, 1)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".hypernet_down." in name:
                p.copy_(scale * torch.randn(p.shape, generator=gen, dtype=torch.float64))


# ----------------------------------------------------------------------------------------------
# the oracle: mtla-spec.md sections 1 to 4 token by token, in the absorbed form, float64


def pe(k, d):
    return torch.tensor([f(k * 10000.0 ** (-2.0 * (j // 2) / d)) for j in range(d)
                         for f in ((math.sin,) if j % 2 == 0 else (math.cos,))], dtype=torch.float64)


def rope_pairs(x, pos, theta):
    """Interleaved-pair RoPE (DeepSeek's complex form): pairs (x[2j], x[2j+1]) rotated by pos theta^(-2j/d)."""
    d = x.shape[-1]
    out = x.clone()
    for j in range(d // 2):
        a = pos * theta ** (-2.0 * j / d)
        c, s = math.cos(a), math.sin(a)
        out[..., 2 * j] = x[..., 2 * j] * c - x[..., 2 * j + 1] * s
        out[..., 2 * j + 1] = x[..., 2 * j] * s + x[..., 2 * j + 1] * c
    return out


def merge_weight(net, k, c):
    code = net.fc_c.weight.double() @ pe(k, c.shape[-1]) + net.fc_c.bias.double()
    return torch.sigmoid(code @ (net.fc_p.weight.double() @ c + net.fc_p.bias.double()))


def decode_oracle(attention, hidden, s):
    """The attention output [T, hidden] of one DeepseekV2Attention over hidden [T, hidden], decoding one
    token at a time with the cache of section 4 (append at t mod s == 0, else add and replace the key)."""
    h, dn, dr, dv, dc = (attention.num_heads, attention.qk_nope_head_dim, attention.qk_rope_head_dim,
                         attention.v_head_dim, attention.kv_lora_rank)
    theta = attention.config.rope_parameters["rope_theta"]
    norm = attention.kv_a_layernorm
    with torch.no_grad():
        q = (hidden @ attention.q_proj.weight.double().T).view(-1, h, dn + dr)
        compressed = hidden @ attention.kv_a_proj_with_mqa.weight.double().T
        raw = compressed[:, :dc]
        latent = norm.weight.double() * raw / torch.sqrt(raw.pow(2).mean(-1, keepdim=True) + norm.variance_epsilon)
        w_kv = attention.kv_b_proj.weight.double().view(h, dn + dv, dc)
        w_uk, w_uv = w_kv[:, :dn], w_kv[:, dn:]
        net = attention.hypernet_down
        rows, keys, outputs = [], [], []
        for t in range(hidden.shape[0]):
            w = merge_weight(net, t // s, latent[t])
            key = rope_pairs(compressed[t, dc:], t, theta)
            if t % s == 0:
                rows.append(w * latent[t])
                keys.append(key)
            else:
                rows[-1] = rows[-1] + w * latent[t]
                keys[-1] = key
            assert len(rows) == math.ceil((t + 1) / s)
            c_rows, k_rows = torch.stack(rows), torch.stack(keys)
            heads = []
            for head in range(h):
                q_latent = w_uk[head].T @ q[t, head, :dn]
                q_rope = rope_pairs(q[t, head, dn:], t, theta)
                p = ((c_rows @ q_latent + k_rows @ q_rope) * attention.scaling).softmax(0)
                heads.append(w_uv[head] @ (p @ c_rows))
            outputs.append(attention.o_proj.weight.double() @ torch.cat(heads))
        return torch.stack(outputs)


def capture_attention(model, layer, ids):
    """(input hidden states, output) of layer `layer`'s self_attn during a forward of the model."""
    seen = {}

    def hook(module, args, kwargs, output):
        seen["hidden"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]
        seen["out"] = output[0]

    handle = model.model.layers[layer].self_attn.register_forward_hook(hook, with_kwargs=True)
    try:
        logits(model, ids)
    finally:
        handle.remove()
    return seen["hidden"], seen["out"]


@pytest.mark.parametrize("s", [1, 2, 3, 4])
def test_training_form_equals_token_by_token_decode(s):
    model = tiny().double()
    lca.patch_mtla(model, down_rate=s)
    randomise_hypernets(model, seed=s)
    ids = torch.randint(0, 100, (2, 11))                       # 11: no multiple of 2, 3 or 4
    hidden, out = capture_attention(model, 1, ids)
    attention = model.model.layers[1].self_attn
    for b in range(2):
        want = decode_oracle(attention, hidden[b], s)
        # DeepSeek's RoPE runs in float32 in transformers (x.float()), so agreement is to ~1e-7, not 1e-12
        torch.testing.assert_close(out[b], want, rtol=1e-6, atol=1e-6)
    lca.unpatch(model)
    _, full = capture_attention(model, 1, ids)
    assert (full - out).abs().max() > 1e-3                     # the merge changes the layer


def test_agrees_with_the_mtla_package_training_forward():
    """The package's MultiheadTemporalLatentAttention mapped onto a DeepseekV2Attention: same projections,
    its LayerNorm latent in place of the RMSNorm, its hyper-network; float64 (the package's PE replaced
    by the spec's formula in float64, as tests/mtla_agreement.py does)."""
    package = pytest.importorskip("mtla.MTLA")
    from transformers.models.deepseek_v2 import modeling_deepseek_v2 as ds

    dims = dict(embed_dim=16, num_heads=2, kv_lora_rank=16, qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5)
    length = 13
    for s, seed in ((2, 11), (4, 12)):
        torch.manual_seed(seed)
        ref = package.MultiheadTemporalLatentAttention(down_rate=s, **dims).double().eval()
        with torch.no_grad():
            for name, p in ref.named_parameters():
                if name == "kv_norm.weight":
                    p.copy_(1.0 + 0.3 * torch.randn_like(p))
                elif p.dim() == 2:
                    p.copy_(torch.randn_like(p) / math.sqrt(p.shape[1]))
                else:
                    p.copy_(0.3 * torch.randn_like(p))
        ref.hypernet_down.positional_encoding = lambda T, pos=0: pe_rows(T, dims["kv_lora_rank"])[None]

        config = transformers.DeepseekV2Config(
            vocab_size=10, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
            kv_lora_rank=16, q_lora_rank=None, qk_nope_head_dim=6, qk_rope_head_dim=4, v_head_dim=5,
            intermediate_size=8, rope_parameters={"rope_type": "default", "rope_theta": 10000.0})
        attention = ds.DeepseekV2Attention(config, layer_idx=0).double().eval()
        with torch.no_grad():
            attention.q_proj.weight.copy_(ref.wq.weight)
            attention.kv_a_proj_with_mqa.weight.copy_(ref.wkv_a.weight)
            attention.kv_b_proj.weight.copy_(ref.wkv_b.weight)
            attention.o_proj.weight.copy_(ref.wo.weight)
        attention.kv_a_layernorm = copy.deepcopy(ref.kv_norm)     # a copy: the patch hooks it
        hypernets = {f"hypernet_down.{t}": ref.hypernet_down.get_parameter(t) for t in TENSORS}
        lca.patch_mtla(attention, down_rate=s, hypernets=hypernets, impl="dense")

        x = torch.randn(1, length, 16, dtype=torch.float64)
        position_ids = torch.arange(length)[None]
        freqs = ds.DeepseekV2RotaryEmbedding(config)(x, position_ids)
        with torch.no_grad():
            want = ref(x, x, x, position=position_ids.float())
            got = attention(hidden_states=x, attention_mask=None, position_embeddings=freqs)[0]
        # both rotate in float32 (x.float()), with frequencies rounded differently: ~5e-8, not 1e-12
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-6)


def pe_rows(count, d):
    return torch.stack([pe(k, d) for k in range(count)])


def test_positional_encoding_and_merge_weights():
    d = 12
    torch.testing.assert_close(mtla.positional_encoding(7, d, dtype=torch.float64), pe_rows(7, d), rtol=0, atol=1e-15)
    net = mtla.HyperNetwork(d).double()
    c = torch.randn(2, 9, d, dtype=torch.float64)
    for s in (1, 2, 4):
        w = net(c, s)
        want = torch.stack([torch.stack([merge_weight(net, i // s, c[b, i]) for i in range(9)]) for b in range(2)])
        torch.testing.assert_close(w, want, rtol=1e-13, atol=1e-13)
    assert net(c.float(), 2).dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):       # weights and sums in fp32 under autocast too
        assert net(c.float(), 2).dtype == torch.float32
        assert mtla.training_rows(c.float(), net(c.float(), 2), 2).dtype == torch.float32
    with pytest.raises(ValueError, match="multiple of 4"):
        mtla.HyperNetwork(10)


def test_dense_attention_equals_the_stride_aware_mask():
    """The complete-rows-plus-own-row evaluation against a plain softmax over all T rows under the
    training form's mask (the package's generate_stride_aware_causal_mask, written from the spec)."""
    b, h, n, d, dv = 2, 3, 13, 8, 5
    for s in (1, 2, 3, 5, 13, 20):
        q, k = torch.randn(b, h, n, d, dtype=torch.float64), torch.randn(b, h, n, d, dtype=torch.float64)
        v = torch.randn(b, h, n, dv, dtype=torch.float64)
        t, j = torch.arange(n)[:, None], torch.arange(n)[None, :]
        mask = (j <= t) & (((j + 1) % s == 0) | (j == t))
        assert torch.equal(mtla.visibility(n, s), mask)
        want = (q @ k.transpose(2, 3) / math.sqrt(d)).masked_fill(~mask, float("-inf")).softmax(-1) @ v
        torch.testing.assert_close(mtla.mtla_attention(q, k, v, down_rate=s, impl="dense"), want, rtol=1e-12,
                                   atol=1e-12)
        if s > 1:
            assert int(mask[-1].sum()) == math.ceil(n / s)    # the last query sees ceil(n/s) rows


def test_flex_equals_dense_forward():
    from lca.attention import flex_available

    if not flex_available():
        pytest.skip("no FlexAttention")
    q, k, v = torch.randn(1, 4, 70, 16), torch.randn(1, 2, 70, 16), torch.randn(1, 2, 70, 8)
    for s in (1, 3, 16):
        torch.testing.assert_close(mtla.mtla_attention(q, k, v, down_rate=s, impl="flex"),
                                   mtla.mtla_attention(q, k, v, down_rate=s, impl="dense"), rtol=1e-5, atol=1e-5)


def test_s1_is_full_attention_over_the_scaled_latents():
    """Spec identity 3: s = 1 is full MLA attention over w_i c_i. Oracle 1: zero hyper-networks give
    w = sigmoid(0) = 1/2, i.e. the unpatched model with kv_a_layernorm's weight halved. Oracle 2: random
    hyper-networks, the unpatched model with its latents scaled by w_i (computed here) in a hook."""
    model = tiny(seed=5).double()
    ids = torch.randint(0, 100, (2, 17))
    lca.patch_mtla(model, down_rate=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ".hypernet_down." in name:
                p.zero_()
    patched = logits(model, ids)
    lca.unpatch(model)
    original = logits(model, ids)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.kv_a_layernorm.weight.mul_(0.5)
    torch.testing.assert_close(patched, logits(model, ids), rtol=1e-10, atol=1e-10)
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.kv_a_layernorm.weight.mul_(2.0)
    assert torch.equal(logits(model, ids), original)

    lca.patch_mtla(model, down_rate=1)
    randomise_hypernets(model, seed=9)
    nets = [layer.self_attn.hypernet_down for layer in model.model.layers]
    patched = logits(model, ids)
    hypernets = mtla.hypernet_state(model)
    lca.unpatch(model)
    for layer, net in enumerate(nets):
        for t in TENSORS:
            assert torch.equal(hypernets[f"model.layers.{layer}.self_attn.hypernet_down.{t}"], net.get_parameter(t))

    def scale(net):
        def hook(module, args, latent):
            w = torch.stack([torch.stack([merge_weight(net, i, latent[b, i]) for i in range(latent.shape[1])])
                             for b in range(latent.shape[0])])
            return latent * w[..., None]

        return hook

    handles = [layer.self_attn.kv_a_layernorm.register_forward_hook(scale(net))
               for layer, net in zip(model.model.layers, nets)]
    try:
        torch.testing.assert_close(patched, logits(model, ids), rtol=1e-10, atol=1e-10)
    finally:
        for handle in handles:
            handle.remove()
    assert (patched - original).abs().max() > 1e-3


def test_gradients_reach_the_hypernetworks_and_the_model():
    model = tiny().train()
    lca.patch_mtla(model, down_rate=3)
    ids = torch.randint(0, 100, (2, 20))
    model(ids, labels=ids, use_cache=False).loss.backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    for layer in model.model.layers:
        for p in layer.self_attn.hypernet_down.parameters():
            assert p.grad.abs().sum() > 0
        for p in (layer.self_attn.kv_a_proj_with_mqa.weight, layer.self_attn.kv_b_proj.weight,
                  layer.self_attn.q_proj.weight, layer.self_attn.kv_a_layernorm.weight):
            assert p.grad.abs().sum() > 0


def test_gradcheck():
    """Merge weights, rows and attention composed as a layer does, float64, w.r.t. the latents, the
    rope keys, the queries and every hyper-network tensor."""
    s, n, dc, dr, h = 3, 7, 8, 2, 2
    net = mtla.HyperNetwork(dc).double()

    def layer(c, k_rope, q, wc, bc, wp, bp):
        w = torch.func.functional_call(net, {"fc_c.weight": wc, "fc_c.bias": bc, "fc_p.weight": wp, "fc_p.bias": bp},
                                       (c, s))
        rows = mtla.training_rows(c, w, s)
        keys = torch.cat((rows, k_rope), dim=-1)[:, None]
        return mtla.mtla_attention(q, keys, rows[:, None], down_rate=s, impl="dense")

    inputs = [torch.randn(1, n, dc), torch.randn(1, n, dr), torch.randn(1, h, n, dc + dr)]
    inputs += [p.detach().clone() for p in (net.fc_c.weight, net.fc_c.bias, net.fc_p.weight, net.fc_p.bias)]
    inputs = [x.double().requires_grad_() for x in inputs]
    assert torch.autograd.gradcheck(layer, inputs)


def test_save_has_the_runtime_tensors_and_reloads(tmp_path):
    from safetensors import safe_open

    model = tiny(seed=7)
    ids = torch.randint(0, 100, (1, 23))
    lca.patch_mtla(model, down_rate=4)
    randomise_hypernets(model, seed=4)
    want = logits(model, ids)
    finetune.save(model, None, tmp_path / "m")
    config = json.loads((tmp_path / "m" / "config.json").read_text())
    assert config["mtla"] == {"down_rate": 4}
    assert isinstance(config["num_experts_per_tok"], int)      # the C++ loader has no default for it
    assert config.get("_attn_implementation") in (None, "sdpa", "eager")
    assert model.config._attn_implementation == "mtla"          # still patched after saving
    names = {}
    for file in os.listdir(tmp_path / "m"):
        if file.endswith(".safetensors"):
            with safe_open(str(tmp_path / "m" / file), framework="pt") as f:
                names.update({name: tuple(f.get_slice(name).get_shape()) for name in f.keys()})
    dc = model.config.kv_lora_rank
    for layer in range(model.config.num_hidden_layers):
        prefix = f"model.layers.{layer}.self_attn.hypernet_down."
        assert names[prefix + "fc_c.weight"] == (dc // 4, dc) and names[prefix + "fc_p.weight"] == (dc // 4, dc)
        assert names[prefix + "fc_c.bias"] == (dc // 4,) and names[prefix + "fc_p.bias"] == (dc // 4,)

    reloaded = lca.load_mtla(tmp_path / "m")
    assert reloaded.model.layers[0].self_attn._mtla_options["down_rate"] == 4
    assert torch.equal(logits(reloaded.eval(), ids), want)
    assert torch.equal(logits(lca.load_mtla(tmp_path / "m", down_rate=2), ids), logits(
        lca.patch_mtla(reloaded, down_rate=2), ids))
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "m")   # transformers ignores the field
    lca.unpatch(model)
    assert torch.equal(logits(plain, ids), logits(model, ids))
    model.save_pretrained(tmp_path / "plain")
    with pytest.raises(ValueError, match="no MTLA hyper-networks"):
        lca.load_mtla(tmp_path / "plain", down_rate=2)
    with pytest.raises(ValueError, match="down_rate"):
        lca.load_mtla(tmp_path / "plain")


def test_unpatch_restores_exactly():
    model = tiny()
    ids = torch.randint(0, 100, (2, 19))
    names = sorted(model.state_dict())
    implementation = model.config._attn_implementation
    original = logits(model, ids)
    lca.patch_mtla(model, down_rate=2)
    assert lca.is_patched(model) and model.config.mtla == {"down_rate": 2}
    added = sorted(set(model.state_dict()) - set(names))
    assert added == sorted(mtla.hypernet_names(model))
    lca.patch_mtla(model, down_rate=4)                          # re-patching changes s, keeps the hyper-networks
    assert sorted(set(model.state_dict()) - set(names)) == added and model.config.mtla == {"down_rate": 4}
    assert not torch.equal(logits(model, ids), original)
    lca.unpatch(model)
    assert not lca.is_patched(model)
    assert sorted(model.state_dict()) == names
    assert not hasattr(model.config, "mtla")
    assert model.config._attn_implementation == implementation
    assert all(not layer.self_attn.kv_a_layernorm._forward_hooks for layer in model.model.layers)
    assert torch.equal(logits(model, ids), original)
    model.config.mtla = {"down_rate": 8}                        # a field the model had is restored too
    lca.patch_mtla(model, down_rate=2)
    lca.unpatch(model)
    assert model.config.mtla == {"down_rate": 8}


def test_refusals():
    model = tiny()
    ids = torch.randint(0, 100, (1, 12))
    for kwargs, match in ((dict(down_rate=0), "down_rate"), (dict(down_rate=2.0), "down_rate"),
                          (dict(down_rate=True), "down_rate"), (dict(impl="x"), "impl")):
        with pytest.raises(ValueError, match=match):
            lca.patch_mtla(model, **kwargs)
    assert not lca.is_patched(model)
    llama = make_model(make_config("llama", 100, hidden=64, layers=1, heads=4, kv_heads=2, intermediate=96))
    with pytest.raises(ValueError, match="MLA"):
        lca.patch_mtla(llama)
    with pytest.raises(ValueError, match="kv_lora_rank"):
        lca.patch_mtla(tiny(kv_lora_rank=30))
    lca.patch(model, window=4, group=2)
    with pytest.raises(ValueError, match="LCA"):
        lca.patch_mtla(model)
    lca.unpatch(model)
    lca.patch_mtla(model, down_rate=2)
    with pytest.raises(ValueError, match="MTLA"):
        lca.patch(model, window=4, group=2)
    state = mtla.hypernet_state(model)
    missing = dict(state)
    del missing["model.layers.1.self_attn.hypernet_down.fc_p.bias"]
    with pytest.raises(ValueError, match="model.layers.1.self_attn.hypernet_down.fc_p.bias"):
        lca.patch_mtla(model, down_rate=2, hypernets=missing)
    wrong = dict(state)
    wrong["model.layers.0.self_attn.hypernet_down.fc_c.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match="fc_c.weight has shape"):
        lca.patch_mtla(model, down_rate=2, hypernets=wrong)
    with torch.no_grad():
        out = model(ids, use_cache=True)
        with pytest.raises(ValueError, match="use_cache=False"):
            model(ids[:, :1], past_key_values=out.past_key_values, use_cache=True)
    for field in ({"down_rate": 0}, {"down_rate": "2"}, {"rate": 2}, {"down_rate": 2, "x": 1}, 3):
        with pytest.raises(ValueError, match="mtla"):
            mtla.down_rate_of(transformers.PretrainedConfig(mtla=field))
    assert mtla.down_rate_of(transformers.PretrainedConfig()) is None


def test_cache_rows():
    """The evaluation's cache-rows column: against the rows the last query sees (LCA: lca.attention's
    section 4 mask over [representatives ; raw]; MTLA: the training form's mask)."""
    window, group = 10, 4
    for n in (1, 9, 10, 13, 14, 37, 64):
        m = max(0, (n - window) // group)
        last = lca_visibility(n, m, window, group)[-1]
        assert evaluate.cache_rows("lca", n, window, group) == int(last.sum())
        assert evaluate.cache_rows("lca-anchor-only", n, window, group) == int(last.sum())
        assert evaluate.cache_rows("window-only", n, window, group) == int(last[m:].sum())
        assert evaluate.cache_rows("full", n, window, group) == n
        for s in (1, 2, 3, 16):
            assert evaluate.cache_rows("mtla", n, window, group, s) == int(mtla.visibility(n, s)[-1].sum())
    assert evaluate.cache_rows("lca", 131072, 1024, 16) == 9152          # lca-spec.md section 6
    assert [evaluate.cache_rows("mtla", 131072, 1024, 16, s) for s in (2, 4, 16)] == [65536, 32768, 8192]
    with pytest.raises(ValueError, match="down_rate"):
        evaluate.cache_rows("mtla", 10, 4, 2)


def test_finetune_and_evaluate_cli(tmp_path):
    model_dir, out = tmp_path / "model", tmp_path / "mtla"
    tiny_folder(model_dir, "deepseek_v2")
    data = tmp_path / "data.txt"
    data.write_text(text(40, 5) * 30)
    args = ["--model", str(model_dir), "--data", str(data), "--out", str(out), "--attention", "mtla",
            "--seq-len", "48", "--batch-size", "2", "--grad-accum", "1", "--lr", "3e-3", "--warmup", "1",
            "--save-every", "2", "--device", "cpu"]
    with pytest.raises(ValueError, match="down-rate"):
        finetune.main(args + ["--steps", "1"])
    finetune.main(args + ["--steps", "3", "--down-rate", "4"])
    assert json.loads((out / "config.json").read_text())["mtla"] == {"down_rate": 4}
    first, last = mtla.read_hypernets(out / "checkpoint-2"), mtla.read_hypernets(out)
    assert sorted(first) == sorted(last) and len(last) == 4 * 2
    assert any(not torch.equal(first[k], last[k]) for k in last)          # the hyper-networks train
    original = transformers.AutoModelForCausalLM.from_pretrained(model_dir).state_dict()
    trained = transformers.AutoModelForCausalLM.from_pretrained(out).state_dict()
    assert any(not torch.equal(original[k], trained[k]) for k in original)  # and so does the model

    # resuming takes the down rate and hyper-networks from the folder
    finetune.main(args + ["--steps", "4", "--resume", str(out), "--out", str(tmp_path / "resumed")])
    assert torch.load(tmp_path / "resumed" / "trainer_state.pt")["step"] == 4
    assert json.loads((tmp_path / "resumed" / "config.json").read_text())["mtla"] == {"down_rate": 4}
    # training an MTLA folder without MTLA drops the declaration
    finetune.main(args[:-2] + ["--device", "cpu", "--steps", "1", "--model", str(out), "--attention", "full",
                               "--out", str(tmp_path / "full")])
    assert "mtla" not in json.loads((tmp_path / "full" / "config.json").read_text())

    heldout = tmp_path / "heldout.txt"
    heldout.write_text(text(600, 11))
    result, png = tmp_path / "r.json", tmp_path / "r.png"
    evaluate.main(["--model", str(out), "--methods", "full,lca,mtla", "--contexts", "600", "--samples", "1",
                   "--tasks", "niah_single", "--window", "64", "--group", "8", "--heldout", str(heldout),
                   "--ppl-sequences", "1", "--max-new-tokens", "3", "--out", str(result), "--plot", str(png),
                   "--device", "cpu"])
    run = json.loads(result.read_text())
    assert run["down_rate"] == 4
    rows = {r["method"]: r["cache_rows"] for r in run["results"]}
    assert rows == {"full": 600, "lca": 67 + 600 - 8 * 67, "mtla": 150}     # m(600) = (600 - 64) // 8 = 67
    ppl = {p["method"]: p["perplexity"] for p in run["perplexity"]}
    assert math.isfinite(ppl["mtla"]) and ppl["mtla"] != ppl["full"]
    reloaded = lca.load_mtla(out)
    want, _ = evaluate.perplexity(reloaded, finetune.pack(reloaded_tokenizer(out), [text(600, 11)], 600)[:1])
    assert ppl["mtla"] == pytest.approx(want, rel=1e-6)
    printed = evaluate.table([run])
    assert "mtla s=4" in printed and " rows" in printed and " 150 " in printed
    evaluate.main(["--report", str(result), "--plot", str(tmp_path / "both.png")])
    assert png.stat().st_size > 1000
    evaluate.main(["--model", str(out), "--methods", "mtla", "--down-rate", "2", "--contexts", "600", "--samples", "1",
                   "--tasks", "niah_single", "--max-new-tokens", "1", "--out", str(result), "--device", "cpu"])
    assert json.loads(result.read_text())["results"][0]["cache_rows"] == 300
    with pytest.raises(ValueError, match="hyper-networks"):
        evaluate.main(["--model", str(model_dir), "--methods", "full,mtla", "--down-rate", "2", "--contexts", "600",
                       "--samples", "1", "--device", "cpu"])


def reloaded_tokenizer(folder):
    return transformers.AutoTokenizer.from_pretrained(folder)


def test_evaluate_takes_a_patched_models_hypernetworks(tmp_path):
    model, tokenizer = tiny_folder(tmp_path, "deepseek_v2")
    lca.patch_mtla(model, down_rate=3)
    randomise_hypernets(model, seed=2)
    state = mtla.hypernet_state(model)
    run = evaluate.evaluate(model, tokenizer, methods=["mtla", "full"], contexts=[400], tasks=["niah_single"],
                            samples=1, max_new_tokens=2, heldout_text=text(600, 1), ppl_sequences=1)
    assert run["down_rate"] == 3 and not lca.is_patched(model)
    lca.patch_mtla(model, down_rate=3, hypernets=state)
    rows = finetune.pack(tokenizer, [text(600, 1)], 400)[:1]
    assert {p["method"]: p["perplexity"] for p in run["perplexity"]}["mtla"] == pytest.approx(
        evaluate.perplexity(model, rows)[0], rel=1e-6)
    lca.unpatch(model)
    with pytest.raises(ValueError, match="hyper-networks"):
        evaluate.evaluate(model, tokenizer, methods=["mtla"], contexts=[200], down_rate=2)
