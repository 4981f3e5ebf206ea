"""lca.patch and lca.unpatch (exported by the package): LCA in a Hugging Face causal LM, no new parameters.

The least invasive hook transformers offers: an attention function registered in its
AttentionInterface under the name "lca", and the attention modules' config switched to it. Each
attention module keeps its own projections, RoPE and output projection; only the softmax over
keys changes. The per-layer options live in a plain dict on the module (`_lca_options`), which is
neither a parameter nor a buffer, so state_dict and save_pretrained are untouched.

Supported: LlamaAttention, Qwen2Attention (GQA, half-split RoPE, the model's own inverse
frequencies) and DeepseekV2Attention (MLA in the decompressed form it passes: per head
[k_nope ; k_rope] with the rope key shared by all heads).

Limits: the attention needs the queries of the whole sequence, so a patched model runs without
a KV cache (use_cache=False; lca.evaluate decodes that way) and without padding (the custom
implementation gets no padding mask; pack sequences or use batch size 1).
"""

from .attention import KEY_MODES, POOLS, SCORES, IMPLS, lca_attention

IMPLEMENTATION = "lca"
GQA_ATTENTIONS = ("LlamaAttention", "Qwen2Attention")
MLA_ATTENTIONS = ("DeepseekV2Attention",)


def hf_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """The AttentionInterface function: q [B, Hq, N, d], k/v [B, Hkv, N, d] -> ([B, N, Hq, dv], None)."""
    options = getattr(module, "_lca_options", None)
    if options is None:
        raise ValueError(f"attention: {type(module).__name__} was not patched by lca.patch")
    if query.shape[2] != key.shape[2]:
        raise ValueError(f"attention: {query.shape[2]} queries over {key.shape[2]} keys; LCA needs the whole "
                         "sequence's queries, run the patched model with use_cache=False")
    options = dict(options)
    rotary = options.pop("rotary", None)
    if rotary is not None:
        options["inv_freq"] = rotary.inv_freq
    out = lca_attention(query, key, value, scale=scaling, **options)
    return out.transpose(1, 2).contiguous(), None


def _register():
    from transformers import AttentionInterface

    AttentionInterface.register(IMPLEMENTATION, hf_attention)


def _attention_modules(model):
    found = []
    for module in model.modules():
        name = type(module).__name__
        if name in GQA_ATTENTIONS or name in MLA_ATTENTIONS:
            found.append(module)
    return found


def _rotary(model):
    for module in model.modules():
        if type(module).__name__.endswith("RotaryEmbedding") and hasattr(module, "inv_freq"):
            return module
    return None


def patch(model, window=1024, group=16, key_mode="pooled", score="latent", mass_bias=False, pool="softmax",
          impl="auto"):
    """Replaces the attention of every supported layer of `model` with LCA; returns the model.
    Patching a patched model replaces its options; lca.unpatch restores the original attention."""
    if not isinstance(window, int) or window < 0:
        raise ValueError(f"window must be an integer >= 0, got {window!r}")
    if not isinstance(group, int) or group < 1:
        raise ValueError(f"group must be an integer >= 1, got {group!r}")
    for name, value, allowed in (("key_mode", key_mode, KEY_MODES), ("score", score, SCORES), ("pool", pool, POOLS),
                                 ("impl", impl, IMPLS)):
        if value not in allowed:
            raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    if getattr(model, "_lca_method", None) == "mtla":
        raise ValueError(f"model: {type(model).__name__} is patched with MTLA; lca.unpatch it first")
    modules = _attention_modules(model)
    if not modules:
        raise ValueError(f"model: {type(model).__name__} has no supported attention "
                         f"({', '.join(GQA_ATTENTIONS + MLA_ATTENTIONS)})")
    _register()
    rotary = _rotary(model)
    previous = getattr(model, "_lca_previous", None) or {}
    for module in modules:
        options = dict(window=window, group=group, key_mode=key_mode, score=score, mass_bias=bool(mass_bias),
                       pool=pool, impl=impl)
        if type(module).__name__ in MLA_ATTENTIONS:
            options["mla_rope_dim"] = module.qk_rope_head_dim
        else:
            if rotary is None and key_mode == "pooled" and pool == "softmax":
                raise ValueError("model: no rotary embedding module found for key_mode 'pooled'")
            options["rotary"] = rotary
        module._lca_options = options
        config = module.config
        if id(config) not in previous:
            previous[id(config)] = (config, config._attn_implementation)
        config._attn_implementation = IMPLEMENTATION
    if model.config._attn_implementation != IMPLEMENTATION and id(model.config) not in previous:
        previous[id(model.config)] = (model.config, model.config._attn_implementation)
        model.config._attn_implementation = IMPLEMENTATION
    model._lca_previous = previous
    return model


def unpatch(model):
    """Restores the attention implementation `patch` (or `patch_mtla`) replaced; returns the model.
    For MTLA this also removes the hyper-networks and the config's "mtla" field."""
    previous = getattr(model, "_lca_previous", None)
    if previous is None:
        raise ValueError(f"model: {type(model).__name__} is not patched")
    if getattr(model, "_lca_method", None) == "mtla":
        from .mtla import unpatch_mtla

        return unpatch_mtla(model)
    for config, implementation in previous.values():
        config._attn_implementation = implementation
    for module in _attention_modules(model):
        if hasattr(module, "_lca_options"):
            del module._lca_options
    del model._lca_previous
    return model


def is_patched(model):
    return getattr(model, "_lca_previous", None) is not None
