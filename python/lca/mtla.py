"""MTLA (mtla-spec.md) in its training form for Hugging Face DeepSeek-V2 models, differentiable.

    model = lca.patch_mtla(model, down_rate=4)          # hyper-networks from their initialisation
    model = lca.load_mtla("study/mtla-4")               # a folder saved by a patched model
    lca.unpatch(model)                                  # the original attention, hyper-networks removed

The spec's training form (section 3): row j of a length-T matrix holds the running merge
c~_{floor(j/s)}(j) = sum_{i = s floor(j/s) .. j} w_i c_i with the rope key k^R_j, and query t sees
row j iff j <= t and ((j+1) mod s == 0 or j == t): the complete rows before its chunk and its own
running row. The merge weight is w_i = sigmoid(fc_c(PE(floor(i/s))) . fc_p(c_i)).

How it enters a DeepseekV2Attention: a forward hook on `kv_a_layernorm` replaces the latents c_i
by the rows c~(j) (weights and sums in fp32, at least); the module decompresses them through
`kv_b_proj` as usual, which is exactly the decompression of the merged latents since kv_b_proj is
linear without bias, and keeps k^R_j as row j's key (the latest token's). An attention function
registered in transformers' AttentionInterface under "mtla" applies the visibility above. The
hyper-network is `self_attn.hypernet_down.fc_c` / `fc_p` (nn.Linear, initialised as nn.Linear is,
as the `mtla` package's are), so save_pretrained writes the tensors the C++ runtime loads
(docs/mtla-checkpoints.md), and the config gets "mtla": {"down_rate": s}.

Limits, as for LCA: queries and rows of the whole sequence from position 0 (use_cache=False; a
second forward on a cache raises), no padding masks.
"""

import math
import os

import torch
from torch import nn

from .attention import IMPLS, _check_shapes, choose_impl

IMPLEMENTATION = "mtla"
LOW_RANK = 4                  # fc_c, fc_p: R^{d_c} -> R^{d_c / 4}
HYPERNET = "hypernet_down"    # the attribute name the `mtla` package and our C++ loader use
HYPERNET_TENSORS = ("fc_c.weight", "fc_c.bias", "fc_p.weight", "fc_p.bias")


def _check_down_rate(down_rate):
    if isinstance(down_rate, bool) or not isinstance(down_rate, int) or down_rate < 1:
        raise ValueError(f"down_rate must be an integer >= 1, got {down_rate!r}")


def positional_encoding(chunks, dim, device=None, dtype=torch.float32):
    """PE(k) for k = 0 .. chunks-1 as [chunks, dim] (spec section 1), computed in float64:
    PE(k)[2j] = sin(k 10000^(-2j/dim)), PE(k)[2j+1] = cos(k 10000^(-2j/dim))."""
    if dim % 2 != 0:
        raise ValueError(f"dim must be even, got {dim}")
    k = torch.arange(chunks, dtype=torch.float64, device=device)     # on the device: no copy per forward
    frequency = 10000.0 ** (-2.0 * torch.arange(dim // 2, dtype=torch.float64, device=device) / dim)
    angle = k[:, None] * frequency
    pe = torch.stack((angle.sin(), angle.cos()), dim=-1).reshape(chunks, dim)
    return pe.to(dtype)


class HyperNetwork(nn.Module):
    """fc_c, fc_p: R^{d_c} -> R^{d_c/4}; forward gives the merge weights w_i of spec section 2."""

    def __init__(self, latent_dim, device=None, dtype=None):
        super().__init__()
        if latent_dim % LOW_RANK != 0:
            raise ValueError(f"latent_dim (kv_lora_rank) must be a multiple of {LOW_RANK}, got {latent_dim}")
        self.latent_dim = latent_dim
        self.fc_c = nn.Linear(latent_dim, latent_dim // LOW_RANK, device=device, dtype=dtype)
        self.fc_p = nn.Linear(latent_dim, latent_dim // LOW_RANK, device=device, dtype=dtype)

    def forward(self, latent, down_rate):
        """w [B, T] for latents c [B, T, d_c] at positions 0 .. T-1, in fp32 (float64 for float64 input)."""
        _check_down_rate(down_rate)
        n = latent.shape[-2]
        ct = torch.promote_types(latent.dtype, torch.float32)
        with torch.autocast(latent.device.type, enabled=False):
            chunk_code = positional_encoding(math.ceil(n / down_rate), self.latent_dim, latent.device, ct)
            chunk_code = nn.functional.linear(chunk_code, self.fc_c.weight.to(ct), self.fc_c.bias.to(ct))
            chunk_code = chunk_code.repeat_interleave(down_rate, dim=0)[:n]                 # token i: chunk i // s
            token_code = nn.functional.linear(latent.to(ct), self.fc_p.weight.to(ct), self.fc_p.bias.to(ct))
            return torch.sigmoid((token_code * chunk_code).sum(-1))


def training_rows(latent, weights, down_rate):
    """Row j = sum_{i = s floor(j/s) .. j} w_i c_i for c [B, T, d] and w [B, T]: [B, T, d] in fp32 at least."""
    _check_down_rate(down_rate)
    b, n, d = latent.shape
    ct = torch.promote_types(torch.promote_types(latent.dtype, weights.dtype), torch.float32)
    with torch.autocast(latent.device.type, enabled=False):
        weighted = latent.to(ct) * weights.to(ct)[..., None]
        pad = (-n) % down_rate
        if pad:
            weighted = nn.functional.pad(weighted, (0, 0, 0, pad))
        return weighted.view(b, -1, down_rate, d).cumsum(2).view(b, -1, d)[:, :n]


def visibility(n, down_rate, device=None):
    """Section 3's training-form mask as a boolean [T, T]: query t sees row j iff j <= t and
    ((j+1) mod s == 0 or j == t)."""
    t = torch.arange(n, device=device)[:, None]
    j = torch.arange(n, device=device)[None, :]
    return (j <= t) & (((j + 1) % down_rate == 0) | (j == t))


def _complete_rows(x, down_rate):
    """Rows s-1, 2s-1, ...: the complete chunks of x [B, H, T, d]."""
    m = x.shape[2] // down_rate
    return x[:, :, down_rate - 1: m * down_rate: down_rate]


def _dense(q, k, v, down_rate, scale):
    # Query t sees the complete rows of chunks c with (c+1)s <= t, and its own row t (which is also
    # a complete row when (t+1) mod s == 0, counted once): T x (T/s + 1) scores instead of T x T.
    b, hq, n, _ = q.shape
    per = hq // k.shape[1]
    k = k.repeat_interleave(per, dim=1)
    v = v.repeat_interleave(per, dim=1)
    kc, vc = _complete_rows(k, down_rate), _complete_rows(v, down_rate)
    ct = torch.promote_types(q.dtype, torch.float32)
    logits = torch.matmul(q, kc.transpose(2, 3)).to(ct) * scale
    chunk_end = (torch.arange(kc.shape[2], device=q.device) + 1) * down_rate
    logits = logits.masked_fill(chunk_end[None, :] > torch.arange(n, device=q.device)[:, None], float("-inf"))
    own = (q.to(ct) * k.to(ct)).sum(-1, keepdim=True) * scale
    probs = torch.cat((logits, own), dim=-1).softmax(-1)
    out = torch.matmul(probs[..., :-1].to(v.dtype), vc) + probs[..., -1:].to(ct) * v.to(ct)
    return out.to(v.dtype)


_compiled_flex = None
_block_masks = {}          # one block mask per shape, shared by the layers of a forward


def _mask_mod(complete, down_rate):
    def mask_mod(b, h, q_idx, kv_idx):
        return torch.where(kv_idx < complete, (kv_idx + 1) * down_rate <= q_idx, kv_idx - complete == q_idx)

    return mask_mod


def _flex(q, k, v, down_rate, scale):
    # Keys [complete rows ; all rows]: the same visibility as _dense, O(T) memory.
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    global _compiled_flex
    n = q.shape[2]
    complete = n // down_rate
    key = (n, down_rate, str(q.device))
    block_mask = _block_masks.get(key)
    if block_mask is None:
        if len(_block_masks) > 64:
            _block_masks.clear()
        block_mask = create_block_mask(_mask_mod(complete, down_rate), None, None, n, complete + n, device=q.device)
        _block_masks[key] = block_mask
    keys = torch.cat((_complete_rows(k, down_rate), k), dim=2)
    values = torch.cat((_complete_rows(v, down_rate), v), dim=2)
    fn = flex_attention
    if q.is_cuda:
        if _compiled_flex is None:
            _compiled_flex = torch.compile(flex_attention)
        fn = _compiled_flex
    return fn(q, keys, values, block_mask=block_mask, scale=scale, enable_gqa=q.shape[1] != k.shape[1])


def mtla_attention(q, k, v, *, down_rate, scale=None, impl="auto"):
    """Attention output [B, Hq, T, dv] over the training-form rows: k [B, Hkv, T, d] and v [B, Hkv, T, dv]
    hold row j's key and value (decompressed [W_UK c~(j) ; k^R_j] and W_UV c~(j) for MLA), q the queries
    at positions 0 .. T-1; visibility as `visibility`. impl: "dense" (exact masked softmax over
    T x (T/s + 1) scores), "flex" (FlexAttention with a block mask; CUDA for training) or "auto" (flex
    on CUDA for T >= attention.FLEX_MIN_LENGTH, falling back to dense, with a warning, if it refuses the shapes)."""
    _check_down_rate(down_rate)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    _check_shapes(q, k, v, None)  # the same [B, H, T, d] layout as lca_attention
    scale = 1.0 / math.sqrt(q.shape[-1]) if scale is None else float(scale)
    return choose_impl("mtla_attention", q, impl, lambda: _flex(q, k, v, down_rate, scale),
                       lambda: _dense(q, k, v, down_rate, scale))


# ----------------------------------------------------------------------------------------------
# Hugging Face models


def hf_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The AttentionInterface function: q [B, H, T, d], k/v [B, H, T, d] (rows) -> ([B, T, H, dv], None)."""
    options = getattr(module, "_mtla_options", None)
    if options is None:
        raise ValueError(f"attention: {type(module).__name__} was not patched by lca.patch_mtla")
    if query.shape[2] != key.shape[2]:
        raise ValueError(f"attention: {query.shape[2]} queries over {key.shape[2]} keys; the MTLA training form "
                         "needs the whole sequence, run the patched model with use_cache=False")
    out = mtla_attention(query, key, value, down_rate=options["down_rate"], scale=scaling, impl=options["impl"])
    return out.transpose(1, 2).contiguous(), None


def _merge_hook(attention):
    """Forward hook on attention.kv_a_layernorm: its latents c_i become the training-form rows c~(j)."""

    def hook(norm, args, latent):
        down_rate = attention._mtla_options["down_rate"]
        weights = getattr(attention, HYPERNET)(latent, down_rate)
        return training_rows(latent, weights, down_rate).to(latent.dtype)

    return hook


def _mla_modules(model):
    from .hf import MLA_ATTENTIONS

    return [(name, module) for name, module in model.named_modules() if type(module).__name__ in MLA_ATTENTIONS]


def _prefix(name):
    return f"{name}.{HYPERNET}." if name else f"{HYPERNET}."


def hypernet_names(model):
    """The state-dict names of every hyper-network tensor MTLA gives `model`, in layer order."""
    return [_prefix(name) + tensor for name, _ in _mla_modules(model) for tensor in HYPERNET_TENSORS]


def hypernet_state(model):
    """{name: tensor (a detached copy)} of the hyper-networks of an MTLA-patched model."""
    if getattr(model, "_lca_method", None) != IMPLEMENTATION:
        raise ValueError(f"model: {type(model).__name__} is not patched with MTLA")
    return {name: tensor.detach().clone() for name, tensor in model.state_dict().items() if f".{HYPERNET}." in
            f".{name}"}


def _load_hypernets(model, hypernets):
    for name, module in _mla_modules(model):
        net = getattr(module, HYPERNET)
        for tensor_name in HYPERNET_TENSORS:
            full = _prefix(name) + tensor_name
            if full not in hypernets:
                raise ValueError(f"hypernets: {full} is missing")
            target = net.get_parameter(tensor_name)
            source = hypernets[full]
            if tuple(source.shape) != tuple(target.shape):
                raise ValueError(f"hypernets: {full} has shape {tuple(source.shape)}, expected {tuple(target.shape)}")
            if not torch.isfinite(source).all():
                raise ValueError(f"hypernets: {full} has a non-finite value")
            with torch.no_grad():
                target.copy_(source)


def patch_mtla(model, down_rate=2, hypernets=None, impl="auto"):
    """MTLA with down rate s in every DeepseekV2Attention of `model`; returns the model.

    Adds `self_attn.hypernet_down` (fc_c, fc_p, fp32, nn.Linear's initialisation; or the tensors of
    `hypernets`, a {state-dict name: tensor} dict as `hypernet_state` or `read_hypernets` give) and
    sets config.mtla = {"down_rate": s}. Patching an MTLA-patched model changes s and impl (and loads
    `hypernets` when given), keeping its hyper-networks. lca.unpatch restores the model exactly."""
    from . import hf

    _check_down_rate(down_rate)
    if impl not in IMPLS:
        raise ValueError(f"impl must be one of {IMPLS}, got {impl!r}")
    if hf.is_patched(model) and getattr(model, "_lca_method", None) != IMPLEMENTATION:
        raise ValueError(f"model: {type(model).__name__} is patched with LCA; lca.unpatch it first")
    modules = _mla_modules(model)
    if not modules:
        raise ValueError(f"model: {type(model).__name__} has no MLA attention ({', '.join(hf.MLA_ATTENTIONS)}); "
                         "MTLA merges MLA latents")
    for name, module in modules:
        if module.kv_lora_rank % LOW_RANK != 0:
            raise ValueError(f"model: kv_lora_rank {module.kv_lora_rank} is not a multiple of {LOW_RANK} "
                             "(MTLA's hyper-network maps d_c to d_c/4)")
        if module.kv_b_proj.bias is not None:
            raise ValueError(f"model: {name}.kv_b_proj has a bias; MTLA merges latents before the (linear) "
                             "decompression")
    if not hf.is_patched(model):
        from transformers import AttentionInterface

        AttentionInterface.register(IMPLEMENTATION, hf_attention)
        previous = {}
        hooks = []
        for _, module in modules:
            weight = module.kv_b_proj.weight
            net = HyperNetwork(module.kv_lora_rank, device=weight.device, dtype=torch.float32)
            net.train(module.training)
            setattr(module, HYPERNET, net)
            hooks.append(module.kv_a_layernorm.register_forward_hook(_merge_hook(module)))
            config = module.config
            if id(config) not in previous:
                previous[id(config)] = (config, config._attn_implementation)
        if id(model.config) not in previous:
            previous[id(model.config)] = (model.config, model.config._attn_implementation)
        model._lca_previous = previous
        model._lca_method = IMPLEMENTATION
        model._mtla_hooks = hooks
        model._mtla_previous_field = (hasattr(model.config, "mtla"), getattr(model.config, "mtla", None))
    for config, _ in model._lca_previous.values():
        config._attn_implementation = IMPLEMENTATION
    for _, module in modules:
        module._mtla_options = dict(down_rate=down_rate, impl=impl)
    model.config.mtla = {"down_rate": down_rate}
    if hypernets is not None:
        _load_hypernets(model, hypernets)
    return model


def unpatch_mtla(model):
    """What lca.unpatch does for an MTLA-patched model: hooks, hyper-networks, options and config restored."""
    for hook in model._mtla_hooks:
        hook.remove()
    for _, module in _mla_modules(model):
        if hasattr(module, HYPERNET):
            delattr(module, HYPERNET)
        if hasattr(module, "_mtla_options"):
            del module._mtla_options
    for config, implementation in model._lca_previous.values():
        config._attn_implementation = implementation
    had_field, field = model._mtla_previous_field
    if had_field:
        model.config.mtla = field
    elif hasattr(model.config, "mtla"):
        del model.config.mtla
    for name in ("_lca_previous", "_lca_method", "_mtla_hooks", "_mtla_previous_field"):
        delattr(model, name)
    return model


def down_rate_of(config):
    """The down rate a config declares ("mtla": {"down_rate": s}), or None; malformed fields raise."""
    field = getattr(config, "mtla", None)
    if field is None:
        return None
    if not isinstance(field, dict) or set(field) != {"down_rate"}:
        raise ValueError(f"config: mtla must be an object with the one key 'down_rate', got {field!r}")
    down_rate = field["down_rate"]
    if isinstance(down_rate, bool) or not isinstance(down_rate, int) or down_rate < 1:
        raise ValueError(f"config: mtla.down_rate must be an integer >= 1, got {down_rate!r}")
    return down_rate


def read_hypernets(folder):
    """{name: float32 tensor} of every hyper-network tensor in a model folder's safetensors files ({} if none)."""
    from safetensors import safe_open

    files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
    found = {}
    for file in files:
        with safe_open(os.path.join(folder, file), framework="pt") as f:
            for name in f.keys():
                if f".{HYPERNET}." in f".{name}":
                    found[name] = f.get_tensor(name).float()
    return found


def load_mtla(folder, down_rate=None, impl="auto", **kwargs):
    """A model folder saved with MTLA (config "mtla" and hyper-network tensors), loaded with
    transformers and patched with its hyper-networks; down_rate defaults to the config's.
    Keyword arguments go to AutoModelForCausalLM.from_pretrained (dtype=..., ...)."""
    import transformers

    config = transformers.AutoConfig.from_pretrained(folder)
    declared = down_rate_of(config)
    down_rate = declared if down_rate is None else down_rate
    if down_rate is None:
        raise ValueError(f"load_mtla: {folder} declares no mtla.down_rate in config.json; pass down_rate")
    hypernets = read_hypernets(folder)
    if not hypernets:
        raise ValueError(f"load_mtla: {folder} has no MTLA hyper-networks "
                         f"(model.layers.0.self_attn.{HYPERNET}.fc_c.weight ...)")
    return patch_mtla(from_pretrained(folder, **kwargs), down_rate, hypernets=hypernets, impl=impl)


def from_pretrained(folder, **kwargs):
    """AutoModelForCausalLM.from_pretrained without transformers' notice that the hyper-network tensors
    of an MTLA folder are unused (they are read by `read_hypernets`)."""
    import transformers

    verbosity = transformers.logging.get_verbosity()
    transformers.logging.set_verbosity_error()
    try:
        return transformers.AutoModelForCausalLM.from_pretrained(folder, **kwargs)
    finally:
        transformers.logging.set_verbosity(verbosity)
