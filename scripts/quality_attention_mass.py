#!/usr/bin/env python3
"""Where the last query of a single-needle prompt looks under LCA (docs/quality.md): for each layer and
head, the attention probability on all representatives together and on the best one, for needles that
were condensed and needles still in the window. Runs on the CPU (dense LCA).

    PYTHONPATH=python python3 scripts/quality_attention_mass.py --model study/base --context 2048 --samples 3
"""

import argparse

import torch
import transformers

import lca
import lca.attention as attention
from lca.evaluate import generate_samples


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--context", type=int, default=2048)
    parser.add_argument("--samples", type=int, default=3)
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--seed", type=int, default=100)
    args = parser.parse_args(argv)

    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    model = transformers.AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    lca.patch(model, window=args.window, group=args.group, impl="dense")
    layers = []
    dense = attention._dense

    def recording(q, keys, values, reps, window, group, scale, mass_bias):
        # the last query's probabilities over [representatives ; raw], as _dense computes them
        per = q.shape[1] // keys.shape[1]
        logits = torch.matmul(q[:, :, -1:], keys.repeat_interleave(per, dim=1).transpose(2, 3)).float() * scale
        visible = attention.visibility(q.shape[2], reps, window, group, q.device)[-1]
        p = logits.masked_fill(~visible, float("-inf")).softmax(-1)[0, :, 0]
        layers.append((p[:, :reps].sum(-1), p[:, :reps].max(-1).values if reps else torch.zeros(p.shape[0])))
        return dense(q, keys, values, reps, window, group, scale, mass_bias)

    attention._dense = recording
    for i in range(args.samples):
        sample = generate_samples(tokenizer, "niah_single", args.context, 1, args.seed + i)[0]
        ids = tokenizer(sample["prompt"], return_tensors="pt")["input_ids"]
        at = len(tokenizer(sample["prompt"][: sample["prompt"].find(sample["answers"][0])])["input_ids"])
        layers.clear()
        with torch.no_grad():
            logits = model(input_ids=ids, use_cache=False).logits
        where = "condensed" if at < ids.shape[1] - args.window else "in the window"
        print(f"{ids.shape[1]} tokens, needle at token {at} ({where}); next token "
              f"{tokenizer.decode(logits[0, -1].argmax())!r}, answer {sample['answers'][0]}")
        for layer, (mass, best) in enumerate(layers):
            print(f"  layer {layer}: on representatives {[round(x, 3) for x in mass.tolist()]}, "
                  f"best one {[round(x, 3) for x in best.tolist()]}")


if __name__ == "__main__":
    main()
