"""Fine-tunes (or pre-trains) a Hugging Face causal LM with LCA attention on plain text.

    python -m lca.finetune --model DIR --data FILE.txt [FILE2.txt ...] --steps 1000 \
        --window 1024 --group 16 --seq-len 4096 --out DIR

The text is tokenized by the model's tokenizer (an EOS between files), packed into sequences of
--seq-len tokens and sampled in a seeded order. AdamW, linear warmup then cosine decay, gradient
accumulation, gradient clipping, bf16 autocast on CUDA (fp32 on CPU). Every --save-every steps and
at the end the weights are saved as a Hugging Face folder (save_pretrained + tokenizer) with the
optimizer state beside them (trainer_state.pt), from which --resume continues. --attention full
trains without LCA (pre-training the study's base model). --attention mtla --down-rate S trains
MTLA (mtla-spec.md) in a DeepSeek-V2 model: its hyper-networks from their initialisation (or from
the folder's, when it has them) together with the model; the folders then hold the hyper-network
tensors and the config field "mtla": {"down_rate": S} that the C++ runtime loads.

Several GPUs: start it with torchrun (`torchrun --nproc-per-node 4 -m lca.finetune ...`); each
process trains on its own rows and the gradients are averaged (DistributedDataParallel), so a step
sees batch-size x grad-accum x processes sequences. --time-budget SECONDS fits the run to a time
limit: the step count is set from the speed of the first steps (and printed, so a rerun with that
--steps reproduces the run).
"""

import argparse
import contextlib
import math
import os
import sys
import time


def load_texts(paths):
    texts = []
    for path in paths:
        with open(path, encoding="utf-8", errors="replace") as f:
            texts.append(f.read())
    return texts


def load_documents(paths, answer_starts=None):
    """The "text" field of every line of JSON-lines files (as lca.evaluate --write-training writes);
    answer_starts, a list, receives each document's "answer_start" (None where absent)."""
    import json

    documents = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            for number, line in enumerate(f, 1):
                if line.strip():
                    record = json.loads(line)
                    if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                        raise ValueError(f"task_data: {path}:{number} has no string field 'text'")
                    documents.append(record["text"])
                    if answer_starts is not None:
                        answer_starts.append(record.get("answer_start"))
    return documents


def rows(tokenizer, documents, seq_len, answer_starts=None):
    """One row per document (EOS appended, cut to seq_len, right-padded): (ids, labels) [count, seq_len],
    labels -100 on padding. Right padding leaves the earlier positions of a causal model unchanged.
    answer_starts (one character offset per document, or None): the loss only on the tokens from
    there on (the answer and EOS), the prompt's tokens labelled -100."""
    import torch

    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id or 0
    ids = torch.full((len(documents), seq_len), pad, dtype=torch.long)
    labels = torch.full((len(documents), seq_len), -100, dtype=torch.long)
    for i, document in enumerate(documents):
        tokens = tokenizer(document, add_special_tokens=False)["input_ids"]
        if tokenizer.eos_token_id is not None:
            tokens.append(tokenizer.eos_token_id)
        tokens = tokens[:seq_len]
        ids[i, : len(tokens)] = torch.tensor(tokens)
        first = 0
        if answer_starts is not None:
            if answer_starts[i] is None:
                raise ValueError(f"task_data: document {i} has no 'answer_start' (write it with lca.evaluate "
                                 "--write-training)")
            first = len(tokenizer(document[: answer_starts[i]], add_special_tokens=False)["input_ids"])
        labels[i, first: len(tokens)] = torch.tensor(tokens[first:])
    return ids, labels


def _pieces(text, size=1 << 20):
    """text cut into pieces of about `size` characters, each cut between a newline and a character that
    is not whitespace (where the byte-level pre-tokenizers split anyway), so that encoding the pieces
    gives the tokens of the whole text."""
    start = 0
    while len(text) - start > size:
        cut = start + size
        while cut < len(text) and not (text[cut - 1] == "\n" and not text[cut].isspace()):
            cut += 1
        yield text[start:cut]
        start = cut
    yield text[start:]


def pack(tokenizer, texts, seq_len):
    """Token ids of all texts, EOS after each, cut into [count, seq_len] (the tail is dropped). Long
    texts are encoded in pieces, all pieces in one batch (the fast tokenizers encode a batch in parallel)."""
    import torch

    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2, got {seq_len}")
    pieces, ends = [], []
    for text in texts:
        pieces.extend(_pieces(text))
        ends.append(len(pieces))
    encoded = tokenizer(pieces, add_special_tokens=False)["input_ids"] if pieces else []
    ids, first = [], 0
    for end in ends:
        for piece in encoded[first:end]:
            ids.extend(piece)
        first = end
        if tokenizer.eos_token_id is not None:
            ids.append(tokenizer.eos_token_id)
    count = len(ids) // seq_len
    if count == 0:
        raise ValueError(f"data: {len(ids)} tokens make no sequence of seq_len {seq_len}")
    return torch.tensor(ids[: count * seq_len], dtype=torch.long).view(count, seq_len)


def cosine_schedule(step, steps, warmup, min_ratio=0.1):
    """Learning-rate factor: linear warmup to 1, then cosine down to min_ratio at `steps`."""
    if step < warmup:
        return (step + 1) / warmup
    progress = min(1.0, (step - warmup) / max(1, steps - warmup))
    return min_ratio + (1 - min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def _progress(total, initial):
    try:
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, dynamic_ncols=True)
    except ImportError:
        return None


def save(model, tokenizer, out, optimizer=None, scheduler=None, step=None):
    """A Hugging Face folder with the original attention implementation in its config."""
    import torch

    from .hf import is_patched

    os.makedirs(out, exist_ok=True)
    saved_impl = None
    if is_patched(model):
        # the folder must load without lca installed: record the attention the model had before patching
        saved_impl = model.config._attn_implementation
        model.config._attn_implementation = next(iter(model._lca_previous.values()))[1]
    try:
        model.save_pretrained(out)
    finally:
        if saved_impl is not None:
            model.config._attn_implementation = saved_impl
    if tokenizer is not None:
        tokenizer.save_pretrained(out)
    if optimizer is not None:
        torch.save({"step": step, "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict()},
                   os.path.join(out, "trainer_state.pt"))


def train(model, sequences, *, labels=None, steps=1000, lr=1e-4, warmup=50, batch_size=1, grad_accum=1, weight_decay=0.1,
          max_grad_norm=1.0, seed=0, tokenizer=None, out=None, save_every=0, resume=None, log=None, time_budget=None):
    """Trains `model` (patched or not) on rows of `sequences` [count, seq_len] (labels: the same shape,
    -100 where no loss is taken; default the ids); returns the loss of each step. Under
    torch.distributed (torchrun) every process takes its own rows and the model is wrapped in
    DistributedDataParallel; only rank 0 saves and reports. time_budget (seconds): the step count
    becomes what fits, measured over the first steps (the schedule is set from it)."""
    import torch
    import torch.distributed as dist

    for name, value, low in (("steps", steps, 1), ("batch_size", batch_size, 1), ("grad_accum", grad_accum, 1),
                             ("warmup", warmup, 0), ("save_every", save_every, 0)):
        if not isinstance(value, int) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if lr <= 0:
        raise ValueError(f"lr must be > 0, got {lr!r}")
    if time_budget is not None and time_budget <= 0:
        raise ValueError(f"time_budget must be > 0 seconds, got {time_budget!r}")
    device = next(model.parameters()).device
    distributed = dist.is_available() and dist.is_initialized()
    rank, world = (dist.get_rank(), dist.get_world_size()) if distributed else (0, 1)
    net = model
    if distributed:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.requires_grad and p.dim() < 2]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.95))
    plan = {"steps": steps}  # the schedule reads the step count, which a time budget may change
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: cosine_schedule(s, plan["steps"], warmup))
    start = 0
    if resume is not None:
        state = torch.load(os.path.join(resume, "trainer_state.pt"), map_location=device)
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start = state["step"]
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(sequences.shape[0], generator=generator)
    per_step = batch_size * grad_accum
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu", enabled=False)
    model.train()
    losses = []
    bar = _progress(steps, start) if rank == 0 else None
    began = time.time()
    measure_from = (start + 3, None)  # (step, time): the speed is measured after a few warm-up steps
    step = start
    while step < plan["steps"]:
        if time_budget is not None and step == measure_from[0] + 10:
            per_step_s = (time.time() - measure_from[1]) / 10
            fit = torch.tensor([step + int((time_budget - (time.time() - began)) / per_step_s)], device=device)
            if distributed:
                dist.broadcast(fit, 0)  # every process runs the same number of steps
            plan["steps"] = max(step + 1, min(steps, int(fit.item())))
            if rank == 0:
                print(f"\ntime budget {time_budget:.0f} s at {per_step_s:.3f} s a step: {plan['steps']} steps",
                      file=sys.stderr, flush=True)
                if bar is not None:
                    bar.total = plan["steps"]
        if step == measure_from[0]:
            measure_from = (step, time.time())
        total = 0.0
        for micro in range(grad_accum):
            first = ((step * world + rank) * per_step + micro * batch_size) % sequences.shape[0]
            rows = order[(torch.arange(batch_size) + first) % sequences.shape[0]]
            batch = sequences[rows].to(device)
            targets = batch if labels is None else labels[rows].to(device)
            sync = not distributed or micro == grad_accum - 1  # DDP averages gradients on the last micro-batch
            with contextlib.nullcontext() if sync else net.no_sync():
                with autocast:
                    loss = net(input_ids=batch, labels=targets, use_cache=False).loss / grad_accum
                loss.backward()
            total += loss.item()
        if distributed:
            reduced = torch.tensor([total], device=device)
            dist.all_reduce(reduced)
            total = reduced.item() / world
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(total)
        step += 1
        steps_now = plan["steps"]
        message = f"step {step}/{steps_now} loss {total:.4f} lr {scheduler.get_last_lr()[0]:.2e}"
        if bar is not None:
            bar.set_postfix_str(f"loss {total:.4f}")
            bar.update(1)
        elif log is not None and rank == 0:
            log(f"\r{message} ({time.time() - began:.0f}s)")
        if out is not None and save_every and step % save_every == 0 and step < steps_now and rank == 0:
            save(model, tokenizer, os.path.join(out, f"checkpoint-{step}"), optimizer, scheduler, step)
    if bar is not None:
        bar.close()
    if out is not None and rank == 0:
        save(model, tokenizer, out, optimizer, scheduler, plan["steps"])
    if distributed:
        dist.barrier()
    return losses


def _tokenize(tokenizer, args):
    import torch

    if not args.data and not args.task_data:
        raise ValueError("data: give --data and/or --task-data")
    parts, labels = [], []
    if args.answer_loss and (args.pack_tasks or not args.task_data):
        raise ValueError("answer_loss: needs --task-data as padded rows (not --pack-tasks)")
    texts = load_texts(args.data) + (load_documents(args.task_data) if args.pack_tasks else [])
    if texts:
        packed = pack(tokenizer, texts, args.seq_len)
        parts.append(packed)
        labels.append(packed)
    if args.task_data and not args.pack_tasks:
        starts = [] if args.answer_loss else None
        documents = load_documents(args.task_data, starts)
        task_ids, task_labels = rows(tokenizer, documents, args.seq_len, starts)
        parts.append(task_ids)
        labels.append(task_labels)
        return torch.cat(parts), torch.cat(labels)
    return torch.cat(parts), None  # packed rows only: the labels are the ids


def main(argv=None):
    import torch
    import transformers

    from . import mtla
    from .hf import patch

    parser = argparse.ArgumentParser(prog="python -m lca.finetune", description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Hugging Face folder (weights, config, tokenizer)")
    parser.add_argument("--data", nargs="*", default=[], help="text files, packed into sequences")
    parser.add_argument("--task-data", nargs="*", default=[],
                        help="JSON-lines files of documents, one padded row each (lca.evaluate --write-training)")
    parser.add_argument("--pack-tasks", action="store_true",
                        help="pack the --task-data documents with the text (EOS between) instead of one padded row each")
    parser.add_argument("--answer-loss", action="store_true",
                        help="task documents (one padded row each) train on their answers only")
    parser.add_argument("--token-cache", help="a .pt file of the tokenized rows: written if absent, else read "
                        "instead of tokenizing (the same data and --seq-len are the caller's responsibility)")
    parser.add_argument("--tokenize-only", action="store_true", help="write --token-cache and stop")
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=1000)
    parser.add_argument("--attention", choices=("lca", "full", "mtla"), default="lca")
    parser.add_argument("--down-rate", type=int, default=None,
                        help="MTLA's s (--attention mtla; default: the model's config mtla.down_rate)")
    parser.add_argument("--window", type=int, default=1024)
    parser.add_argument("--group", type=int, default=16)
    parser.add_argument("--key-mode", choices=("pooled", "anchor"), default="pooled")
    parser.add_argument("--score", choices=("latent", "full"), default="latent")
    parser.add_argument("--mass-bias", action="store_true")
    parser.add_argument("--impl", choices=("auto", "dense", "flex"), default="auto")
    parser.add_argument("--seq-len", type=int, default=4096)
    parser.add_argument("--batch-size", type=int, default=1)
    parser.add_argument("--grad-accum", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-4)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--save-every", type=int, default=250)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--resume", help="a checkpoint folder written by this tool (weights and trainer_state.pt)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--time-budget", type=float, default=None,
                        help="seconds: run the steps that fit (at most --steps), measured over the first steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args(argv)

    rank = 0
    if "LOCAL_RANK" in os.environ:  # started by torchrun: one process per GPU
        import torch.distributed as dist

        local = int(os.environ["LOCAL_RANK"])
        torch.cuda.set_device(local)
        dist.init_process_group("nccl", device_id=torch.device("cuda", local))
        rank, args.device = dist.get_rank(), f"cuda:{local}"
    torch.manual_seed(args.seed)
    source = args.resume or args.model
    tokenizer = transformers.AutoTokenizer.from_pretrained(args.model)
    model = mtla.from_pretrained(source, dtype=torch.float32).to(args.device)
    if args.gradient_checkpointing:
        model.gradient_checkpointing_enable()
    if args.attention == "lca":
        patch(model, window=args.window, group=args.group, key_mode=args.key_mode, score=args.score,
              mass_bias=args.mass_bias, impl=args.impl)
    elif args.attention == "mtla":
        down_rate = args.down_rate if args.down_rate is not None else mtla.down_rate_of(model.config)
        if down_rate is None:
            raise ValueError(f"down_rate: give --down-rate ({source} declares no mtla.down_rate)")
        hypernets = mtla.read_hypernets(source)   # a resumed (or MTLA) folder's; none: from initialisation
        mtla.patch_mtla(model, down_rate, hypernets=hypernets or None, impl=args.impl)
        if rank == 0:
            print(f"MTLA s = {down_rate}, hyper-networks {'from ' + source if hypernets else 'initialised'}",
                  file=sys.stderr)
    if args.attention != "mtla" and getattr(model.config, "mtla", None) is not None:
        # trained without its hyper-networks: the saved folder must not declare them
        del model.config.mtla
        print(f"{source} declares mtla; training with --attention {args.attention} drops the declaration",
              file=sys.stderr)
    if args.token_cache and os.path.exists(args.token_cache):
        sequences, labels = torch.load(args.token_cache)
    else:
        sequences, labels = _tokenize(tokenizer, args)
        if args.token_cache and rank == 0:
            torch.save((sequences, labels), args.token_cache)
    if args.tokenize_only:
        print(f"{args.token_cache}: {sequences.shape[0]} sequences of {sequences.shape[1]} tokens", file=sys.stderr)
        return
    if rank == 0:
        print(f"{sequences.shape[0]} sequences of {args.seq_len} tokens; attention {args.attention}", file=sys.stderr)
    losses = train(model, sequences, labels=labels, steps=args.steps, lr=args.lr, warmup=args.warmup, batch_size=args.batch_size,
                   grad_accum=args.grad_accum, weight_decay=args.weight_decay, seed=args.seed, tokenizer=tokenizer,
                   out=args.out, save_every=args.save_every, resume=args.resume,
                   log=lambda s: print(s, end="", file=sys.stderr, flush=True), time_budget=args.time_budget)
    if rank == 0:
        print(f"\nfinal loss {losses[-1]:.4f} (first {losses[0]:.4f}); {len(losses)} steps; saved to {args.out}",
              file=sys.stderr)
    if "LOCAL_RANK" in os.environ:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main()
