"""lca.evaluate: task generators (answers present and recoverable, lengths within the context),
RULER scoring, greedy decoding and perplexity against direct computations, the CLI end to end."""

import json
import math
import re
from collections import Counter

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

import lca  # noqa: E402
from lca import evaluate  # noqa: E402
from tiny import text, tiny_folder  # noqa: E402


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    path = tmp_path_factory.mktemp("model")
    model, tokenizer = tiny_folder(path)
    return path, model.eval(), tokenizer


def n_tokens(tokenizer, s):
    return len(tokenizer(s, add_special_tokens=False)["input_ids"])


@pytest.mark.parametrize("task", evaluate.TASKS)
@pytest.mark.parametrize("context", [700, 1500])
def test_generators(folder, task, context):
    _, _, tokenizer = folder
    samples = evaluate.generate_samples(tokenizer, task, context, 3, seed=7)
    assert samples == evaluate.generate_samples(tokenizer, task, context, 3, seed=7)
    assert samples != evaluate.generate_samples(tokenizer, task, context, 3, seed=8)
    for sample in samples:
        prompt, answers = sample["prompt"], sample["answers"]
        size = n_tokens(tokenizer, prompt)
        assert size + evaluate.MAX_NEW_TOKENS[task] <= context
        assert size >= 0.5 * context                           # the haystack fills the context
        body = prompt[: prompt.rindex("\n")]                   # the text before the question
        for answer in answers:
            assert answer in body
        if task.startswith("niah"):
            key = re.search(r"magic numbers? for (\w+) mentioned", prompt).group(1)
            found = re.findall(rf"special magic numbers for {key} is: (\d+)\.", body)
            assert sorted(found) == sorted(answers)
        elif task == "variable_tracking":
            value = re.search(r"assigned the value (\d+) in", prompt).group(1)
            assigned = {value}
            for name, source in re.findall(r"VAR (\w+) = (VAR \w+|\d+)\.", body):
                if source.removeprefix("VAR ") in assigned:
                    assigned.add(name)
            assert sorted(assigned - {value}) == sorted(answers)
        else:
            counts = Counter(re.findall(r"\d+\. (\w+)", body))
            assert min(counts[a] for a in answers) > max(c for w, c in counts.items() if w not in answers)


def test_generator_arguments(folder):
    _, _, tokenizer = folder
    with pytest.raises(ValueError, match="task"):
        evaluate.generate_samples(tokenizer, "nope", 512, 1, 0)
    with pytest.raises(ValueError, match="context"):
        evaluate.generate_samples(tokenizer, "niah_single", 16, 1, 0)
    with pytest.raises(ValueError, match="context"):
        evaluate.generate_samples(tokenizer, "niah_single", 100, 1, 0)


def test_scoring():
    assert evaluate.string_match_all("The number is 1234567.", ["1234567"]) == 1.0
    assert evaluate.string_match_all("1111111 and 2222222", ["1111111", "2222222", "3333333", "4444444"]) == 0.5
    assert evaluate.string_match_all("ABCDE, fghij", ["abcde", "FGHIJ", "KLMNO"]) == pytest.approx(2 / 3)
    assert evaluate.string_match_all("nothing", ["x1"]) == 0.0
    assert evaluate.string_match_part("no, 2222222", ["1111111", "2222222"]) == 1.0
    assert evaluate.string_match_part("none", ["1111111", "2222222"]) == 0.0
    with pytest.raises(ValueError, match="answers"):
        evaluate.string_match_all("x", [])


def test_greedy_with_cache_equals_recompute(folder):
    _, model, tokenizer = folder
    ids = torch.tensor([tokenizer(text(40, 3), add_special_tokens=False)["input_ids"]])
    cached = evaluate.greedy(model, ids, 8)
    lca.patch(model, window=10_000, group=16)                  # no group condensed: full attention, no cache
    try:
        assert evaluate.greedy(model, ids, 8) == cached
    finally:
        lca.unpatch(model)
    assert len(cached) == 8


def test_perplexity_matches_model_loss(folder):
    _, model, _ = folder
    rows = torch.randint(0, 300, (2, 24))
    ppl, count = evaluate.perplexity(model, rows)
    with torch.no_grad():
        losses = [model(input_ids=r[None], labels=r[None]).loss for r in rows]
    assert count == 2 * 23
    assert ppl == pytest.approx(math.exp(sum(float(x) for x in losses) / 2), rel=1e-5)


def test_cli_end_to_end(folder, tmp_path):
    path, _, _ = folder
    heldout = tmp_path / "heldout.txt"
    heldout.write_text(text(600, 11))
    out, png = tmp_path / "r.json", tmp_path / "r.png"
    evaluate.main(["--model", str(path), "--contexts", "600,700", "--samples", "1", "--window", "64", "--group", "8",
                   "--heldout", str(heldout), "--ppl-sequences", "1", "--max-new-tokens", "6", "--out", str(out), "--plot", str(png),
                   "--device", "cpu"])
    run = json.loads(out.read_text())
    assert {(r["method"], r["context"]) for r in run["results"]} == {
        (m, c) for m in evaluate.METHODS for c in (600, 700)}
    assert all(0.0 <= r["score"] <= 1.0 and r["samples"] == 1 for r in run["results"])
    ppl = {(p["method"], p["context"]): p["perplexity"] for p in run["perplexity"]}
    assert len(ppl) == 8 and all(math.isfinite(v) and v > 1 for v in ppl.values())
    assert ppl[("lca", 700)] != ppl[("full", 700)]             # condensing changes the predictions
    assert png.stat().st_size > 1000
    evaluate.main(["--report", str(out), str(out), "--plot", str(tmp_path / "both.png")])
    with pytest.raises(ValueError, match="methods"):
        evaluate.main(["--model", str(path), "--methods", "full,bogus"])


def test_write_training(folder, tmp_path):
    from lca import finetune

    path, _, tokenizer = folder
    out = tmp_path / "train.jsonl"
    evaluate.main(["--write-training", str(out), "--tokenizer", str(path), "--contexts", "700", "--samples", "2",
                   "--seed", "1000"])
    documents = finetune.load_documents([out])
    assert len(documents) == 2 * len(evaluate.TASKS)
    samples = evaluate.generate_samples(tokenizer, "niah_single", 700, 2, 1000)
    assert documents[0] == evaluate.solved(samples[0])
    assert documents[0].endswith(" " + samples[0]["answers"][0] + ".")
    evaluation = evaluate.generate_samples(tokenizer, "niah_single", 700, 2, 0)
    assert evaluation[0]["answers"] != samples[0]["answers"]
