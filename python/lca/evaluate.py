"""RULER-style long-context evaluation of full attention, LCA and two sparse baselines.

    python -m lca.evaluate --model DIR --methods full,lca,lca-anchor-only,window-only \
        --contexts 1024,2048,4096 --window 1024 --group 16 --samples 20 --heldout FILE.txt \
        --out results.json --plot results.png
    python -m lca.evaluate --model MTLA_DIR --methods full,mtla ...     (s from the folder's config)
    python -m lca.evaluate --report a.json b.json --plot both.png      (table and plot of saved runs)

Tasks (generated here from a seed, after RULER's definitions): single needle, multi-key needle,
multi-value needle, variable tracking and common-word extraction. Answers are generated greedily
and scored as RULER does: the fraction of reference strings found in the prediction
(case-insensitive), averaged over samples. Perplexity is measured on held-out text cut into
sequences of each context length.

Methods: full (unpatched), lca (pool="softmax"), lca-anchor-only (each group represented by its
anchor token's own k/v), window-only (condensed groups dropped: the last w..w+g-1 tokens), mtla
(mtla-spec.md with the hyper-networks of a folder fine-tuned by lca.finetune --attention mtla, at
the down rate of its config or --down-rate). Each result records the rows one layer's cache holds
after `context` tokens (`cache_rows`).
"""

import argparse
import json
import math
import random
import sys

METHODS = {
    "full": None,
    "lca": dict(pool="softmax"),
    "lca-anchor-only": dict(pool="anchor"),
    "window-only": dict(pool="drop"),
}
MTLA = "mtla"
ALL_METHODS = tuple(METHODS) + (MTLA,)
TASKS = ("niah_single", "niah_multikey", "niah_multivalue", "variable_tracking", "common_words")
MAX_NEW_TOKENS = {"niah_single": 24, "niah_multikey": 24, "niah_multivalue": 64, "variable_tracking": 48,
                  "common_words": 96}

# RULER's noise haystack: repeated plain sentences, so only the needles carry information.
NOISE = "The grass is green. The sky is blue. The sun is yellow. Here we go. There and back again. "
KEY_WORDS = ("apple harbor violet canyon ember falcon glacier hollow island jasper kettle lantern meadow nectar "
             "orchid pepper quartz river saddle timber umbra velvet willow yonder zephyr amber basil cobalt "
             "dune fable garnet heron ivory juniper kelp lotus marble nutmeg opal pebble").split()
COMMON_WORDS = ("stone cloud paper river window garden silver engine candle forest button mirror ladder pocket "
                "rocket saddle tunnel velvet wagon yellow anchor barrel cactus dragon falcon guitar helmet "
                "jacket kitten lemon magnet needle orange parrot quiver rabbit salmon tomato violin walrus").split()


# ----------------------------------------------------------------------------------------------
# task generators: each returns dict(prompt=..., answers=[...]) with the prompt ending where the
# model's answer begins


def _fill(tokenizer, unit, budget, rng, inserts):
    """`unit` repeated to at most `budget` tokens, with `inserts` placed in their order at random unit
    boundaries."""

    def tokens(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    def build(count, slots):
        parts, pending = [], list(zip(slots, inserts))
        for i in range(count + 1):
            while pending and pending[0][0] == i:
                parts.append(pending.pop(0)[1])
            if i < count:
                parts.append(unit)
        return "".join(parts)

    if tokens("".join(inserts)) > budget:
        raise ValueError(f"context is too small: the inserted facts alone exceed the {budget} haystack tokens")
    per_unit = tokens(unit * 10) / 10
    count = max(0, int((budget - tokens("".join(inserts))) / per_unit))
    slots = sorted(rng.randrange(count + 1) for _ in inserts)
    text = build(count, slots)
    while count > 0 and tokens(text) > budget:                # token merges at the seams: trim to fit
        count = max(0, count - max(1, int((tokens(text) - budget) / per_unit)))
        slots = [min(s, count) for s in slots]
        text = build(count, slots)
    return text


def _number(rng):
    return str(rng.randint(1000000, 9999999))


def _needle(key, value):
    return f"One of the special magic numbers for {key} is: {value}. "


def _budget(tokenizer, context, task, *texts):
    """Tokens left for the haystack: the prompt and its answer fit `context`, as in RULER."""
    fixed = sum(len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    budget = context - fixed - MAX_NEW_TOKENS[task] - 2
    if budget < 16:
        raise ValueError(f"context {context} is too small for task {task} (it needs more than {context - budget + 16})")
    return budget


NIAH_INTRO = "Some special magic numbers are hidden within the following text. Remember them.\n"
VT_INTRO = "Memorize and track the chain(s) of variable assignment hidden in the following text.\n"
CWE_INTRO = ("Below is a numbered list of words. In these words, some appear more often than others. "
             "Memorize the ones that appear most often.\n")


def niah_single(tokenizer, context, rng):
    key, value = rng.choice(KEY_WORDS), _number(rng)
    question = (f"\nWhat is the special magic number for {key} mentioned in the provided text? "
                f"The special magic number for {key} mentioned in the provided text is")
    budget = _budget(tokenizer, context, "niah_single", NIAH_INTRO, question)
    hay = _fill(tokenizer, NOISE, budget, rng, [_needle(key, value)])
    return dict(prompt=NIAH_INTRO + hay + question, answers=[value])


def niah_multikey(tokenizer, context, rng, distractors=3):
    keys = rng.sample(KEY_WORDS, distractors + 1)
    values = [_number(rng) for _ in keys]
    question = (f"\nWhat is the special magic number for {keys[0]} mentioned in the provided text? "
                f"The special magic number for {keys[0]} mentioned in the provided text is")
    needles = [_needle(k, v) for k, v in zip(keys, values)]
    rng.shuffle(needles)
    budget = _budget(tokenizer, context, "niah_multikey", NIAH_INTRO, question)
    hay = _fill(tokenizer, NOISE, budget, rng, needles)
    return dict(prompt=NIAH_INTRO + hay + question, answers=[values[0]])


def niah_multivalue(tokenizer, context, rng, count=4):
    key = rng.choice(KEY_WORDS)
    values = [_number(rng) for _ in range(count)]
    question = (f"\nWhat are all the special magic numbers for {key} mentioned in the provided text? "
                f"The special magic numbers for {key} mentioned in the provided text are")
    budget = _budget(tokenizer, context, "niah_multivalue", NIAH_INTRO, question)
    hay = _fill(tokenizer, NOISE, budget, rng, [_needle(key, v) for v in values])
    return dict(prompt=NIAH_INTRO + hay + question, answers=values)


def variable_tracking(tokenizer, context, rng, hops=4):
    value = str(rng.randint(10000, 99999))
    names = ["".join(rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ") for _ in range(5)) for _ in range(hops + 1)]
    chain = [f"VAR {names[0]} = {value}. "] + [f"VAR {names[i]} = VAR {names[i - 1]}. " for i in range(1, hops + 1)]
    question = (f"\nFind all variables that are assigned the value {value} in the text above. "
                f"Answer: According to the chain(s) of variable assignment in the text above, {hops + 1} variables "
                f"are assigned the value {value}, they are:")
    budget = _budget(tokenizer, context, "variable_tracking", VT_INTRO, question)
    hay = _fill(tokenizer, NOISE, budget, rng, chain)                # the chain keeps its order
    return dict(prompt=VT_INTRO + hay + question, answers=names)


def common_words(tokenizer, context, rng, top=5, top_ratio=10):
    """RULER's CWE: a numbered word list in which `top` words each appear `top_ratio` times as often as
    every other word, as long as fits the context."""
    words = list(COMMON_WORDS)
    rng.shuffle(words)
    frequent, rare = words[:top], words[top:]
    question = (f"\nQuestion: What are the {top} most common words in the above list? "
                f"Answer: The top {top} words that appear most often in the list are:")
    budget = _budget(tokenizer, context, "common_words", question)

    def listing(few, rare_words=len(rare), ratio=top_ratio):
        items = frequent * (few * ratio) + rare[:rare_words] * few
        rng.shuffle(items)
        return CWE_INTRO + " ".join(f"{i + 1}. {w}" for i, w in enumerate(items))

    def tokens(text):
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    few = max(1, int(budget / tokens(listing(1))))
    text = listing(few)
    while few > 1 and tokens(text) > budget:
        few -= 1
        text = listing(few)
    # short contexts: fewer distinct rare words, then a smaller frequency ratio (at least 2)
    rare_words, ratio = len(rare), top_ratio
    while tokens(text) > budget:
        if rare_words > 1:
            rare_words = max(1, rare_words * 3 // 4)
        elif ratio > 2:
            ratio -= 1
        else:
            raise ValueError(f"context {context} is too small for task common_words")
        text = listing(1, rare_words, ratio)
    return dict(prompt=text + question, answers=frequent)


GENERATORS = {"niah_single": niah_single, "niah_multikey": niah_multikey, "niah_multivalue": niah_multivalue,
              "variable_tracking": variable_tracking, "common_words": common_words}


def generate_samples(tokenizer, task, context, count, seed):
    if task not in GENERATORS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")
    if context < 32:
        raise ValueError(f"context must be >= 32 tokens, got {context}")
    rng = random.Random(f"{seed}:{task}:{context}")
    return [GENERATORS[task](tokenizer, context, rng) for _ in range(count)]


def solved(sample):
    """The prompt followed by its answer, as a training document."""
    return sample["prompt"] + " " + ", ".join(sample["answers"]) + "."


def write_training(tokenizer, path, tasks, contexts, samples, seed):
    """JSON-lines training documents of solved tasks (fields "text" and "answer_start", the character
    where the answer begins, for training on the answers alone); returns their count."""
    count = 0
    with open(path, "w", encoding="utf-8") as f:
        for context in contexts:
            for task in tasks:
                for sample in generate_samples(tokenizer, task, context, samples, seed):
                    f.write(json.dumps({"text": solved(sample), "answer_start": len(sample["prompt"])}) + "\n")
                    count += 1
    return count


# ----------------------------------------------------------------------------------------------
# scoring (RULER's string_match_all and string_match_part)


def string_match_all(prediction, answers):
    """The fraction of reference strings found in the prediction, case-insensitive."""
    if not answers:
        raise ValueError("answers must not be empty")
    text = prediction.lower()
    return sum(a.lower() in text for a in answers) / len(answers)


def string_match_part(prediction, answers):
    """1 if any reference string is found in the prediction, case-insensitive, else 0."""
    if not answers:
        raise ValueError("answers must not be empty")
    text = prediction.lower()
    return float(any(a.lower() in text for a in answers))


# ----------------------------------------------------------------------------------------------
# decoding, perplexity, methods


def greedy(model, ids, max_new_tokens, eos_token_id=None):
    """Greedy continuation of ids [1, L]; a patched (LCA) model is re-run over the whole sequence each
    step, since LCA condenses with the queries of the whole sequence; an unpatched one uses its cache."""
    import torch

    from .hf import is_patched

    cached = not is_patched(model)
    generated = []
    past = None
    current = ids
    with torch.no_grad():
        for _ in range(max_new_tokens):
            if cached:
                out = model(input_ids=current, past_key_values=past, use_cache=True, logits_to_keep=1)
                past = out.past_key_values
            else:
                out = model(input_ids=ids, use_cache=False, logits_to_keep=1)
            token = int(out.logits[0, -1].argmax())
            if eos_token_id is not None and token == eos_token_id:
                break
            generated.append(token)
            current = torch.tensor([[token]], device=ids.device)
            ids = torch.cat((ids, current), dim=1)
    return generated


def perplexity(model, sequences, batch_size=1):
    """exp(mean next-token NLL) over rows of sequences [count, L]."""
    import torch

    total, tokens = 0.0, 0
    device = next(model.parameters()).device
    with torch.no_grad():
        for first in range(0, sequences.shape[0], batch_size):
            batch = sequences[first: first + batch_size].to(device)
            logits = model(input_ids=batch, use_cache=False).logits.float()
            nll = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]),
                                                    batch[:, 1:].reshape(-1), reduction="sum")
            total += float(nll)
            tokens += batch[:, 1:].numel()
    return math.exp(total / tokens), tokens


def cache_rows(method, n, window, group, down_rate=None):
    """Rows one layer's cache holds after n tokens: full n; lca and lca-anchor-only m(n) + n - g m(n)
    (lca-spec.md section 6); window-only n - g m(n) (the raw window alone: groups are dropped); mtla
    ceil(n / s) (mtla-spec.md section 4)."""
    from .ops import condensed_groups

    if method not in ALL_METHODS:
        raise ValueError(f"method must be one of {ALL_METHODS}, got {method!r}")
    if method == "full":
        return n
    if method == MTLA:
        if down_rate is None:
            raise ValueError("down_rate: method mtla needs one")
        return -(-n // down_rate)
    m = condensed_groups(n, window, group)
    return n - group * m if method == "window-only" else m + n - group * m


def apply_method(model, method, window, group, key_mode="pooled", mass_bias=False, impl="auto", down_rate=None,
                 hypernets=None):
    """Unpatches `model` and patches it for `method`; mtla takes its down rate and hyper-networks
    (lca.mtla.hypernet_state's dict) from the arguments."""
    from .hf import is_patched, patch, unpatch
    from .mtla import patch_mtla

    if method not in ALL_METHODS:
        raise ValueError(f"method must be one of {ALL_METHODS}, got {method!r}")
    if method == MTLA and (down_rate is None or hypernets is None):
        raise ValueError("method mtla needs down_rate and hypernets")
    if is_patched(model):
        unpatch(model)
    if method == MTLA:
        patch_mtla(model, down_rate, hypernets=hypernets, impl=impl)
    elif METHODS[method] is not None:
        patch(model, window=window, group=group, key_mode=key_mode, mass_bias=mass_bias, impl=impl,
              **METHODS[method])
    return model


def _mtla_setup(model, down_rate, hypernets):
    """The down rate and hyper-networks method mtla evaluates: the arguments, else the model's own (an
    MTLA-patched model, e.g. from lca.load_mtla), the down rate else from the config's "mtla" field."""
    from . import mtla

    if getattr(model, "_lca_method", None) == mtla.IMPLEMENTATION:
        if hypernets is None:
            hypernets = mtla.hypernet_state(model)
        if down_rate is None:
            down_rate = mtla.down_rate_of(model.config)
    if down_rate is None:
        down_rate = mtla.down_rate_of(model.config)
    if hypernets is None:
        raise ValueError("evaluate: method mtla needs trained hyper-networks (a folder written by lca.finetune "
                         "--attention mtla, or a model patched by lca.patch_mtla)")
    if down_rate is None:
        raise ValueError("evaluate: method mtla needs a down rate (--down-rate, or the config's mtla.down_rate)")
    return down_rate, hypernets


def evaluate(model, tokenizer, *, methods, contexts, tasks=TASKS, samples=10, window=1024, group=16,
             key_mode="pooled", mass_bias=False, heldout_text=None, ppl_sequences=4, seed=0, impl="auto",
             max_new_tokens=None, progress=None, down_rate=None, hypernets=None):
    """Scores of every (method, context, task) and perplexities; a JSON-ready dict. Method mtla uses
    `down_rate` and `hypernets` (lca.mtla.hypernet_state's dict), by default those of an MTLA-patched
    model (and the down rate of its config)."""
    import torch

    from .finetune import pack

    if MTLA in methods:
        down_rate, hypernets = _mtla_setup(model, down_rate, hypernets)
    else:
        down_rate = None
    device = next(model.parameters()).device
    model.eval()
    results, perplexities = [], []
    data = {(task, context): generate_samples(tokenizer, task, context, samples, seed)
            for task in tasks for context in contexts}
    for method in methods:
        apply_method(model, method, window, group, key_mode, mass_bias, impl, down_rate, hypernets)
        for context in contexts:
            rows_kept = cache_rows(method, context, window, group, down_rate)
            for task in tasks:
                scores = []
                for sample in data[(task, context)]:
                    ids = torch.tensor([tokenizer(sample["prompt"], add_special_tokens=False)["input_ids"]],
                                       device=device)
                    limit = MAX_NEW_TOKENS[task] if max_new_tokens is None else min(max_new_tokens, MAX_NEW_TOKENS[task])
                    answer = tokenizer.decode(greedy(model, ids, limit, tokenizer.eos_token_id))
                    scores.append(string_match_all(answer, sample["answers"]))
                results.append(dict(method=method, context=context, task=task, score=sum(scores) / len(scores),
                                    samples=len(scores), cache_rows=rows_kept))
                if progress:
                    progress(f"{method} {context} {task}: {results[-1]['score']:.3f}")
            if heldout_text:
                try:
                    rows = pack(tokenizer, [heldout_text], context)[:ppl_sequences]
                except ValueError:
                    rows = None
                if rows is not None:
                    ppl, count = perplexity(model, rows)
                    perplexities.append(dict(method=method, context=context, perplexity=ppl, tokens=count,
                                             cache_rows=rows_kept))
                    if progress:
                        progress(f"{method} {context} perplexity: {ppl:.3f}")
    apply_method(model, "full", window, group)
    return dict(window=window, group=group, key_mode=key_mode, mass_bias=mass_bias, seed=seed, samples=samples,
                down_rate=down_rate, tasks=list(tasks), results=results, perplexity=perplexities)


# ----------------------------------------------------------------------------------------------
# report


def mean_scores(run):
    """{(method, context): mean score over tasks}."""
    sums = {}
    for r in run["results"]:
        sums.setdefault((r["method"], r["context"]), []).append(r["score"])
    return {key: sum(v) / len(v) for key, v in sums.items()}


def method_name(method, run):
    """The method as tables and plots name it: mtla with its down rate."""
    return f"{method} s={run['down_rate']}" if method == MTLA and run.get("down_rate") else method


def run_cache_rows(run, method, context):
    """cache_rows of a saved run's (method, context) (computed for runs saved before it was recorded)."""
    for r in run["results"]:
        if r["method"] == method and r["context"] == context and "cache_rows" in r:
            return r["cache_rows"]
    return cache_rows(method, context, run["window"], run["group"], run.get("down_rate"))


def table(runs):
    """Plain-text table: one row per (run label, method, context), cache rows, task scores, mean, perplexity."""
    lines = []
    for run in runs:
        label = run.get("label", run.get("model", ""))
        tasks = run["tasks"]
        rate = f", s={run['down_rate']}" if run.get("down_rate") else ""
        lines.append(f"{label}  (w={run['window']}, g={run['group']}{rate}, samples={run['samples']})")
        lines.append(" ".join(["method".ljust(16), "context".rjust(7), "rows".rjust(7)]
                              + [t[:12].rjust(12) for t in tasks] + ["mean".rjust(6), "ppl".rjust(9)]))
        ppl = {(p["method"], p["context"]): p["perplexity"] for p in run.get("perplexity", [])}
        score = {(r["method"], r["context"], r["task"]): r["score"] for r in run["results"]}
        means = mean_scores(run)
        for method, context in sorted(means, key=lambda k: (ALL_METHODS.index(k[0]), k[1])):
            cells = [f"{score.get((method, context, t), float('nan')):12.3f}" for t in tasks]
            p = ppl.get((method, context))
            lines.append(" ".join([method_name(method, run).ljust(16), str(context).rjust(7),
                                   str(run_cache_rows(run, method, context)).rjust(7)] + cells
                                  + [f"{means[(method, context)]:6.3f}", f"{p:9.3f}" if p else " " * 9]))
        lines.append("")
    return "\n".join(lines)


def plot(runs, path):
    """Mean accuracy vs context, one line per (run, method); perplexity beside it where measured."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    with_ppl = any(run.get("perplexity") for run in runs)
    fig, axes = plt.subplots(1, 2 if with_ppl else 1, figsize=(11 if with_ppl else 6, 4), squeeze=False)
    for run in runs:
        label = run.get("label", "")
        means = mean_scores(run)
        for method in ALL_METHODS:
            name = f"{label} {method_name(method, run)}".strip()
            points = sorted((c, s) for (m, c), s in means.items() if m == method)
            if points:
                axes[0][0].plot([c for c, _ in points], [s for _, s in points], marker="o", label=name)
            ppl = sorted((p["context"], p["perplexity"]) for p in run.get("perplexity", []) if p["method"] == method)
            if ppl and with_ppl:
                axes[0][1].plot([c for c, _ in ppl], [p for _, p in ppl], marker="o", label=name)
    contexts = sorted({r["context"] for run in runs for r in run["results"]})
    for ax in axes[0]:
        ax.set_xscale("log")
        ax.set_xticks(contexts, [str(c) for c in contexts])
        ax.minorticks_off()
    axes[0][0].set(xlabel="context (tokens)", ylabel="mean RULER-style score", ylim=(-0.02, 1.02), title="accuracy")
    axes[0][0].legend(fontsize=7)
    if with_ppl:
        axes[0][1].set(xlabel="context (tokens)", ylabel="perplexity", title="held-out perplexity")
        axes[0][1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _ints(text, name):
    try:
        values = [int(x) for x in text.split(",") if x]
    except ValueError:
        raise ValueError(f"{name} must be a comma-separated list of integers, got {text!r}") from None
    if not values:
        raise ValueError(f"{name} must not be empty")
    return values


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lca.evaluate", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", help="Hugging Face folder")
    parser.add_argument("--label", help="name of this run in tables and plots (default: the model folder)")
    parser.add_argument("--methods", default="full,lca,lca-anchor-only,window-only")
    parser.add_argument("--contexts", default="1024,2048,4096")
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--samples", type=int, default=20)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--key-mode", choices=("pooled", "anchor"), default="pooled")
    parser.add_argument("--mass-bias", action="store_true")
    parser.add_argument("--down-rate", type=int, default=None,
                        help="MTLA's s for method mtla (default: the model's config mtla.down_rate)")
    # dense by default: decoding re-runs every length once, which would recompile FlexAttention each time
    parser.add_argument("--impl", choices=("auto", "dense", "flex"), default="dense")
    parser.add_argument("--heldout", help="text file for perplexity")
    parser.add_argument("--ppl-sequences", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="cap on each task's answer length")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default=None)
    parser.add_argument("--out", help="results JSON")
    parser.add_argument("--plot", help="PNG of accuracy (and perplexity) vs context")
    parser.add_argument("--report", nargs="+", help="print and plot saved result JSONs instead of evaluating")
    parser.add_argument("--write-training", metavar="FILE.jsonl",
                        help="write --samples solved tasks per task and context (prompt + answer) for training "
                             "with lca.finetune --task-data, instead of evaluating; use a seed unlike the evaluation's")
    parser.add_argument("--tokenizer", help="tokenizer folder for --write-training (default: --model)")
    args = parser.parse_args(argv)

    if args.write_training:
        import transformers

        source = args.tokenizer or args.model
        if not source:
            parser.error("--write-training needs --tokenizer or --model")
        tokenizer = transformers.AutoTokenizer.from_pretrained(source)
        tasks = [t for t in args.tasks.split(",") if t]
        count = write_training(tokenizer, args.write_training, tasks, _ints(args.contexts, "contexts"), args.samples,
                               args.seed)
        print(f"{args.write_training}: {count} documents")
        return

    if args.report:
        runs = []
        for path in args.report:
            with open(path) as f:
                runs.append(json.load(f))
    else:
        if not args.model:
            parser.error("--model is required unless --report is given")
        import torch
        import transformers

        from . import mtla

        methods = [m for m in args.methods.split(",") if m]
        for method in methods:
            if method not in ALL_METHODS:
                raise ValueError(f"methods: {method!r} is not one of {ALL_METHODS}")
        tasks = [t for t in args.tasks.split(",") if t]
        for task in tasks:
            if task not in TASKS:
                raise ValueError(f"tasks: {task!r} is not one of {TASKS}")
        contexts = _ints(args.contexts, "contexts")
        device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
        dtype = torch.bfloat16 if device.startswith("cuda") else torch.float32
        tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
        model = mtla.from_pretrained(args.model, dtype=dtype).to(device)
        hypernets = None
        if MTLA in methods:
            hypernets = mtla.read_hypernets(args.model)
            if not hypernets:
                raise ValueError(f"methods: mtla needs a folder with MTLA hyper-networks; {args.model} has none "
                                 "(fine-tune it with lca.finetune --attention mtla)")
        heldout = open(args.heldout, encoding="utf-8", errors="replace").read() if args.heldout else None
        run = evaluate(model, tokenizer, methods=methods, contexts=contexts, tasks=tasks, samples=args.samples,
                       window=args.window, group=args.group, key_mode=args.key_mode, mass_bias=args.mass_bias,
                       heldout_text=heldout, ppl_sequences=args.ppl_sequences, seed=args.seed, impl=args.impl,
                       max_new_tokens=args.max_new_tokens, progress=lambda s: print(s, file=sys.stderr, flush=True),
                       down_rate=args.down_rate, hypernets=hypernets)
        run["model"] = args.model
        run["label"] = args.label or args.model.rstrip("/").split("/")[-1]
        runs = [run]
        if args.out:
            with open(args.out, "w") as f:
                json.dump(run, f, indent=1)
    print(table(runs))
    if args.plot:
        plot(runs, args.plot)


if __name__ == "__main__":
    main()
