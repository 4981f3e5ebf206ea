"""Creates a randomly initialised Hugging Face causal LM folder (config, weights, tokenizer) for
training from scratch: a byte-level BPE tokenizer trained on the given text files and a Llama,
Qwen2 or DeepSeek-V2 (MLA, dense MLP) architecture of the requested size.

    python -m lca.make_model --arch llama --text FILE... --vocab 8192 --hidden 512 --layers 8 \
        --heads 8 --kv-heads 2 --max-positions 8192 --out DIR

--tokenizer DIR instead of --text reuses the tokenizer of another folder (models that share data).
"""

import argparse

ARCHS = ("llama", "qwen2", "deepseek_v2")
SPECIAL_TOKENS = ("<|endoftext|>", "<|pad|>")


def train_tokenizer(texts, vocab_size):
    """A byte-level BPE tokenizer (transformers.PreTrainedTokenizerFast) trained on an iterable of strings."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 256 + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be at least {256 + len(SPECIAL_TOKENS)} for a byte-level BPE, got {vocab_size}")
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, eos_token=SPECIAL_TOKENS[0], pad_token=SPECIAL_TOKENS[1])


def make_config(arch, vocab_size, hidden=512, layers=8, heads=8, kv_heads=None, intermediate=None,
                max_positions=8192, rope_theta=10000.0, kv_lora_rank=None, rope_head_dim=None):
    """A transformers config for `arch`; DeepSeek-V2 gets a dense MLP in every layer (no MoE)."""
    import transformers

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")
    if hidden % heads != 0:
        raise ValueError(f"hidden {hidden} must be a multiple of heads {heads}")
    kv_heads = heads if kv_heads is None else kv_heads
    if heads % kv_heads != 0:
        raise ValueError(f"heads {heads} must be a multiple of kv_heads {kv_heads}")
    intermediate = intermediate or 4 * hidden
    common = dict(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                  intermediate_size=intermediate, max_position_embeddings=max_positions,
                  rope_parameters={"rope_type": "default", "rope_theta": rope_theta}, tie_word_embeddings=False)
    if arch == "llama":
        return transformers.LlamaConfig(num_key_value_heads=kv_heads, **common)
    if arch == "qwen2":
        return transformers.Qwen2Config(num_key_value_heads=kv_heads, **common)
    head_dim = hidden // heads
    rope = rope_head_dim or max(2, head_dim // 2)
    # num_experts_per_tok is unused without MoE layers, but the C++ runtime's loader requires it
    return transformers.DeepseekV2Config(num_key_value_heads=heads, kv_lora_rank=kv_lora_rank or 4 * head_dim,
                                         q_lora_rank=None, qk_nope_head_dim=head_dim, qk_rope_head_dim=rope,
                                         v_head_dim=head_dim, first_k_dense_replace=layers, n_routed_experts=1,
                                         num_experts_per_tok=1, moe_intermediate_size=intermediate, **common)


def make_model(config, seed=0):
    import torch
    import transformers

    torch.manual_seed(seed)
    return transformers.AutoModelForCausalLM.from_config(config)


def read_texts(paths):
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            yield f.read()


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lca.make_model", description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=ARCHS, default="llama")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", nargs="+", help="text files to train the tokenizer on")
    source.add_argument("--tokenizer", help="a folder whose tokenizer to reuse (no training)")
    parser.add_argument("--vocab", type=int, default=8192)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--heads", type=int, default=8)
    parser.add_argument("--kv-heads", type=int, default=None)
    parser.add_argument("--intermediate", type=int, default=None)
    parser.add_argument("--max-positions", type=int, default=8192)
    parser.add_argument("--rope-theta", type=float, default=10000.0)
    parser.add_argument("--kv-lora-rank", type=int, default=None, help="deepseek_v2 only")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    if args.tokenizer:
        import transformers

        tokenizer = transformers.AutoTokenizer.from_pretrained(args.tokenizer)
    else:
        tokenizer = train_tokenizer(read_texts(args.text), args.vocab)
    config = make_config(args.arch, len(tokenizer), args.hidden, args.layers, args.heads, args.kv_heads,
                         args.intermediate, args.max_positions, args.rope_theta, args.kv_lora_rank)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    model = make_model(config, args.seed)
    model.save_pretrained(args.out)
    tokenizer.save_pretrained(args.out)
    print(f"{args.out}: {args.arch}, {sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters, "
          f"vocab {len(tokenizer)}")


if __name__ == "__main__":
    main()
