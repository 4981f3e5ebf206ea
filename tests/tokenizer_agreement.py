#!/usr/bin/env python3
"""lca's tokenizer against Hugging Face `tokenizers`, on small vocabularies
trained here: identical ids and identical decodes on many strings.

  python3 tests/tokenizer_agreement.py path/to/lca [--seed N] [--keep DIR]

Trains byte-level BPE with the GPT-2 regex (with and without a prefix space),
with the Llama-3 and Qwen2 regexes (Split + ByteLevel; Qwen2 with NFC and a
non-special added token), with DeepSeek-V3's three splits, with individual
digits + ByteLevel (SmolLM2), and
SentencePiece-style BPE with byte fallback (Llama-2's normalizers and decoders,
and the Metaspace pre-tokenizer/decoder form). Each tokenizer.json goes to
`lca tokenize --jsonl`; the byte-level vocabularies and the Llama-2 one also
go through `--vocab` (Tokenizer::from_vocab, as a GGUF loader builds it).

Random strings draw from every code point (byte soup) and from every code
point Python's unicodedata calls assigned. No filter is needed: lca's tables
(scripts/gen_unicode_tables.py) follow `tokenizers` 0.23.3 on all of
U+0000-10FFFF, with its regex classes at Unicode 16.0 and its NFC at Unicode
9.0. Another `tokenizers` version may disagree on recently assigned
characters; the script says so when it runs one.

Exits 77 (ctest: Skipped) with a SKIPPED line when `tokenizers` is not importable.
"""
import argparse
import json
import os
import random
import subprocess
import sys
import tempfile
import unicodedata

try:
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
except ImportError:
    print("SKIPPED: the Python package `tokenizers` is not importable "
          "(scripts/install-deps.sh installs it with pip)")
    sys.exit(77)

GPT2 = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3 = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
          r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2 = LLAMA3.replace(r"\p{N}{1,3}", r"\p{N}")
SPACE = "\u2581"
TABLES_MATCH_TOKENIZERS = "0.23.3"  # the version scripts/gen_unicode_tables.py follows
# DeepSeek-V3's splits as its tokenizer.json has them (CR and LF as characters in the third).
DEEPSEEK3 = [r"\p{N}{1,3}", "[\u4e00-\u9fa5\u3040-\u309f\u30a0-\u30ff]+",
             "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+"
             "| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"]

# Characters the random strings draw from: every class the patterns tell apart.
POOL = (list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ") * 4 + list("0123456789") * 3 +
        list(" " * 20 + "\t\n\r\x0b\x0c") + list("'''\".,;:!?-_()[]{}<>/\\|@#$%^&*+=~`") +
        list("\u00a0\u2009\u3000\u2028\u0085\u180e\u200b") +  # odd spaces (U+180E, U+200B: not \s)
        list("éèêëàçñøßÉÑΩαβγδЖжщ") + list("日本語中文한국어ひらがなカタカナ\u4e00\u9fa5\u9fa6\u3041\u309f\u30a0\u30ff\u3100") + list("٠١٢٣¹²³½Ⅻ①０１") +  # numbers of all kinds
        list("€$+<=>^`|~©®™∑√→★♪") + list("、。「」（）！？：；") + ["\u200d", "\u200e", "\x7f", "\x01"] +
        ["e\u0301", "a\u0308", "\u0301", "\u0915\u094d\u0937"] +  # combining marks (NFC composes some)
        ["👍", "👍🏽", "👨\u200d👩\u200d👧", "🇩🇪", "\U0001F600"] + ["ſ", "'S", "'RE", "'ll", "'ſ", "K"])

FIXED = [
    "", "Hello world", "Hello, world! How's it going? I'll be there; we're fine; they've gone; I'm; he'd.",
    "DON'T SHOUT, IT'S RUDE. We'RE 'LL 'Ve", "'ſ 'ſt 's' ''s", "  leading and trailing  ", "\t\ttabs\tinside\t",
    "line\r\nbreaks\n\n\nand\r\r mixed \n \n", "    ", "\n", " ", "a\u00a0b\u3000c\u2028d", "x  \n  y",
    "1234567890 3.14159 1,000,000 007 12ab34 ab12cd", "²³ ½ Ⅻ ①② ٠١٢ ０１２", "日本語のテキストと中文，还有한국어。",
    "émigré naïve façade Ωμέγα Жук", "e\u0301 a\u0308o\u0308 \u1100\u1161\u11a8", "👍🏽 👨‍👩‍👧 🇩🇪 😀😀",
    "<|endoftext|>", "a<|endoftext|>b", "<|endoftext|><|endoftext|> x", "<|im_start|>user\nhi<|im_end|>",
    "<tool_call>{\"a\": 1}</tool_call>", "<s>hello</s> <s>", "<|begin_of_text|>Hi<|eot_id|>",
    "<0x41> is not a byte", "sing tion", "ing tion ing tionx", "ing  tion", "def f(x):\n    return x ** 2  # square\n", "https://example.com/a?b=c&d=e#f",
    "ALL CAPS WORDS AND lowercase words", "!!!???...,,,", " !x", " \u0301x", "\u0085\u0085a",
]


def random_string(rng, n):
    return "".join(rng.choice(POOL) for _ in range(n))


def byte_soup(rng, n):
    return bytes(rng.randrange(256) for _ in range(n)).decode("utf-8", errors="replace")


def assigned_soup(rng, n):
    """Random assigned code points (letters, marks, numbers, symbols of any script)."""
    out = []
    while len(out) < n:
        cp = rng.choice([rng.randrange(0x20, 0x800), rng.randrange(0x800, 0x10000), rng.randrange(0x10000, 0x30000)])
        if 0xD800 <= cp <= 0xDFFF:
            continue
        if unicodedata.category(chr(cp)) in ("Cn", "Co", "Cs"):
            continue
        out.append(chr(cp))
    return "".join(out)


def corpus(rng):
    syllables = ["ka", "to", "ri", "men", "the", "an", "ing", "tion", "er", "st", "qu", "ou", "ly", "re", "con"]
    lines = []
    for _ in range(1500):
        words = []
        for _ in range(rng.randrange(3, 14)):
            r = rng.random()
            if r < 0.7:
                w = "".join(rng.choice(syllables) for _ in range(rng.randrange(1, 4)))
                words.append(w.capitalize() if rng.random() < 0.2 else w)
            elif r < 0.8:
                words.append(str(rng.randrange(0, 100000)))
            elif r < 0.9:
                words.append(rng.choice(["it's", "I'll", "we're", "don't", "(x)", "...", "--", "é", "日本", "👍"]))
            else:
                words.append(random_string(rng, rng.randrange(1, 6)))
        lines.append(" ".join(words) + rng.choice(["", ".", "\n", "  ", "\t"]))
    return lines + FIXED


def train(tok, lines, vocab_size, special, **kw):
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special, show_progress=False, **kw)
    tok.train_from_iterator(lines, trainer)
    return tok


def byte_level(lines, pre, special, add_prefix_space=False):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre
    tok.decoder = decoders.ByteLevel()
    return train(tok, lines, 1500, special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet())


def build(lines):
    """(name, tokenizer.json dict, vocab dict for from_vocab or None)."""
    cases = []

    # GPT-2: ByteLevel with its regex.
    t = byte_level(lines, pre_tokenizers.ByteLevel(add_prefix_space=False), ["<|endoftext|>"])
    cases.append(("gpt2", json.loads(t.to_str()), "gpt2"))
    t = byte_level(lines, pre_tokenizers.ByteLevel(add_prefix_space=True), ["<|endoftext|>"])
    cases.append(("gpt2-prefix-space", json.loads(t.to_str()), None))

    # Llama-3: Split(regex) + ByteLevel without regex, ignore_merges, BOS by template.
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3), behavior="isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t = byte_level(lines, pre, ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>"])
    t.post_processor = processors.Sequence([
        processors.ByteLevel(trim_offsets=False),
        processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                      special_tokens=[("<|begin_of_text|>", t.token_to_id("<|begin_of_text|>"))])])
    j = json.loads(t.to_str())
    j["model"]["ignore_merges"] = True
    cases.append(("llama3", j, "llama3"))
    j2 = json.loads(json.dumps(j))  # the same split written as OLMo's dolma2 tokenizer has it
    j2["pre_tokenizer"]["pretokenizers"][0].update(behavior="Removed", invert=True)
    cases.append(("llama3-removed", j2, None))

    # Qwen2: its regex, NFC, a non-special added token.
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2), behavior="isolated"),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t = byte_level(lines, pre, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    t.add_tokens([AddedToken("<tool_call>", special=False, normalized=False)])
    j = json.loads(t.to_str())
    cases.append(("qwen2-no-nfc", j, "qwen2"))
    j = json.loads(t.to_str())
    j["normalizer"] = {"type": "NFC"}
    cases.append(("qwen2", j, None))

    # SmolLM2: each digit alone, then ByteLevel with the GPT-2 regex.
    pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                   pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])
    t = byte_level(lines, pre, ["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    cases.append(("smollm", json.loads(t.to_str()), "smollm"))

    # DeepSeek-V3: three splits, then ByteLevel without regex.
    pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r), behavior="isolated") for r in DEEPSEEK3] +
                                  [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    t = byte_level(lines, pre, ["<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"])
    cases.append(("deepseek3", json.loads(t.to_str()), "deepseek-v3"))

    # Llama-2: SentencePiece-style BPE, byte fallback, no pre-tokenizer at encode time.
    byte_tokens = ["<0x%02X>" % b for b in range(256)]
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    t.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    t.pre_tokenizer = pre_tokenizers.Split(SPACE, behavior="merged_with_next")  # training words only
    train(t, lines, 1200, ["<unk>", "<s>", "</s>"] + byte_tokens, limit_alphabet=120)
    t.pre_tokenizer = None
    t.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.ByteFallback(), decoders.Fuse(),
                                   decoders.Strip(" ", 1, 0)])
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    j = json.loads(t.to_str())
    # The byte tokens are ordinary vocabulary entries in Llama-2, not added tokens.
    j["added_tokens"] = [a for a in j["added_tokens"] if a["content"] not in byte_tokens]
    cases.append(("llama2", j, "sentencepiece"))

    # The same vocabulary with Metaspace (prepend first, split) and a Metaspace decoder.
    j2 = json.loads(json.dumps(j))
    j2["normalizer"] = None
    j2["pre_tokenizer"] = {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "first", "split": True}
    j2["decoder"] = {"type": "Sequence", "decoders": [
        {"type": "Metaspace", "replacement": SPACE, "prepend_scheme": "always", "split": True},
        {"type": "ByteFallback"}, {"type": "Fuse"}]}
    cases.append(("metaspace", j2, None))

    # No byte tokens: characters outside a small alphabet become <unk>, fused
    # or one each; an added token matched in the normalized text.
    t = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False, fuse_unk=True))
    t.normalizer = normalizers.Sequence([normalizers.Prepend(SPACE), normalizers.Replace(" ", SPACE)])
    t.pre_tokenizer = pre_tokenizers.Split(SPACE, behavior="merged_with_next")
    train(t, lines, 600, ["<unk>", "<s>", "</s>"], limit_alphabet=40)
    t.pre_tokenizer = None
    t.decoder = decoders.Sequence([decoders.Replace(SPACE, " "), decoders.Fuse(), decoders.Strip(" ", 1, 0)])
    t.add_tokens([AddedToken("ing tion", normalized=True, special=False)])
    j = json.loads(t.to_str())
    cases.append(("sp-unk-fused", j, None))
    j = json.loads(t.to_str())
    j["model"]["fuse_unk"] = False
    cases.append(("sp-unk", j, None))
    return cases


def vocab_for(j, kind):
    """The BpeVocab (as `lca tokenize --vocab` reads it) equivalent to tokenizer.json j."""
    model = j["model"]
    ids = dict(model["vocab"])
    ids.update({a["content"]: a["id"] for a in j["added_tokens"]})  # a GGUF file lists every token
    tokens = [None] * (max(ids.values()) + 1)
    for s, i in ids.items():
        tokens[i] = s
    merges = [m if isinstance(m, str) else " ".join(m) for m in model["merges"]]
    special = [a["id"] for a in j["added_tokens"] if a["special"]]
    user = [a["id"] for a in j["added_tokens"] if not a["special"]]
    v = {"tokens": tokens, "merges": merges, "special_ids": special, "user_defined_ids": user}
    if kind == "sentencepiece":
        v.update(kind="sentencepiece", unk_id=model["vocab"]["<unk>"], bos_id=1, add_bos=True)
    else:
        v.update(kind="byte_level", pre_tokenizer=kind)
        if kind == "llama3":
            v.update(bos_id=model["vocab"]["<|begin_of_text|>"], add_bos=True)
    return v


def run_lca(lca, args, texts):
    data = "".join(json.dumps(s) + "\n" for s in texts)
    r = subprocess.run([lca, "tokenize", *args, "--jsonl", "-"], input=data.encode(), capture_output=True)
    if r.returncode != 0:
        raise SystemExit("lca tokenize failed: " + r.stderr.decode(errors="replace"))
    return [json.loads(line) for line in r.stdout.decode().split("\n") if line]  # not splitlines: U+2028


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("lca")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--keep", default=None, help="write the tokenizer files here")
    a = ap.parse_args()
    seed = a.seed if a.seed is not None else int.from_bytes(os.urandom(4), "little")
    version = __import__("tokenizers").__version__
    if version != TABLES_MATCH_TOKENIZERS:
        print(f"note: tokenizers {version}; lca's Unicode tables follow {TABLES_MATCH_TOKENIZERS}")
    print(f"seed {seed} (rerun with --seed {seed})")
    rng = random.Random(seed)

    lines = corpus(rng)
    texts = list(FIXED)
    texts += [random_string(rng, rng.randrange(1, 40)) for _ in range(300)]
    texts += [byte_soup(rng, rng.randrange(1, 200)) for _ in range(40)]
    texts += [assigned_soup(rng, rng.randrange(1, 60)) for _ in range(60)]
    texts += [" ".join(rng.sample(lines, 5)) for _ in range(40)]
    texts.append("".join(rng.sample(lines, 200)))  # one long text

    failures = 0
    with tempfile.TemporaryDirectory() as tmp:
        out_dir = a.keep or tmp
        os.makedirs(out_dir, exist_ok=True)
        for name, j, vocab_kind in build(lines):
            path = os.path.join(out_dir, name + ".json")
            with open(path, "w", encoding="utf-8") as f:
                json.dump(j, f, ensure_ascii=False)
            hf = Tokenizer.from_file(path)
            sources = [("tokenizer.json", ["--tokenizer", path])]
            if vocab_kind:
                vpath = os.path.join(out_dir, name + ".vocab.json")
                with open(vpath, "w", encoding="utf-8") as f:
                    json.dump(vocab_for(j, vocab_kind), f, ensure_ascii=False)
                sources.append(("from_vocab", ["--vocab", vpath]))
            for how, args in sources:
                results = run_lca(a.lca, args, texts)
                bad = 0
                for text, ours in zip(texts, results):
                    enc = hf.encode(text)
                    want = {"ids": enc.ids, "decoded": hf.decode(enc.ids, skip_special_tokens=False),
                            "decoded_skip_special": hf.decode(enc.ids, skip_special_tokens=True)}
                    # The pieces BPE sees, compared directly: BPE can hide a wrong split.
                    norm = hf.normalizer.normalize_str(text) if hf.normalizer else text
                    want["pieces"] = ([p for p, _ in hf.pre_tokenizer.pre_tokenize_str(norm)] if hf.pre_tokenizer
                                      else ([norm] if norm else []))
                    for key in want:
                        if ours[key] != want[key]:
                            bad += 1
                            if bad <= 5:
                                print(f"  {name} ({how}): {key} differs for {text[:200]!r}:\n"
                                      f"    hf  {repr(want[key])[:300]}\n    lca {repr(ours[key])[:300]}")
                            break
                total_ids = sum(len(r["ids"]) for r in results)
                print(f"{'FAIL' if bad else 'ok'}  {name:18s} {how:15s} {len(texts)} strings, {total_ids} ids, "
                      f"vocab {hf.get_vocab_size()}, {bad} differ")
                failures += bad
    if failures:
        print(f"FAILED: {failures} strings differ from Hugging Face tokenizers")
        sys.exit(1)
    print("all identical to Hugging Face tokenizers", __import__("tokenizers").__version__)


if __name__ == "__main__":
    main()
