"""A tiny random model folder with a trained byte-level tokenizer, shared by the tool tests."""

import random

from lca.make_model import make_config, make_model, train_tokenizer

WORDS = ("alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november oscar papa "
         "quebec romeo sierra tango uniform victor whiskey xray yankee zulu").split()


def text(words, seed):
    rng = random.Random(seed)
    return " ".join(rng.choice(WORDS) for _ in range(words)) + "."


def tiny_folder(path, arch="llama", seed=0):
    tokenizer = train_tokenizer([text(2000, seed), "0123456789 key value: is the ."], 320)
    config = make_config(arch, len(tokenizer), hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96,
                         max_positions=1024)
    config.eos_token_id = tokenizer.eos_token_id
    config.pad_token_id = tokenizer.pad_token_id
    model = make_model(config, seed)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return model, tokenizer
