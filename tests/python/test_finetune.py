"""lca.finetune: a tiny random model trains on CPU, its loss falls on repeated text, the saved folder
reloads with transformers and resumes."""

import os

import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from lca import finetune  # noqa: E402
from tiny import text, tiny_folder  # noqa: E402


def test_cosine_schedule():
    assert finetune.cosine_schedule(0, 100, 10) == pytest.approx(0.1)
    assert finetune.cosine_schedule(9, 100, 10) == pytest.approx(1.0)
    assert finetune.cosine_schedule(10, 100, 10) == pytest.approx(1.0)
    assert finetune.cosine_schedule(55, 100, 10) == pytest.approx(0.55)      # halfway: (1 + 0.1) / 2
    assert finetune.cosine_schedule(100, 100, 10) == pytest.approx(0.1)


def test_pack(tmp_path):
    _, tokenizer = tiny_folder(tmp_path)
    texts = [text(50, 1), text(70, 2)]
    rows = finetune.pack(tokenizer, texts, 16)
    ids = tokenizer(texts[0], add_special_tokens=False)["input_ids"]
    assert rows.shape[1] == 16 and rows.flatten()[: len(ids)].tolist() == ids
    assert rows.flatten()[len(ids)] == tokenizer.eos_token_id
    with pytest.raises(ValueError, match="seq_len"):
        finetune.pack(tokenizer, texts, 1)
    with pytest.raises(ValueError, match="data"):
        finetune.pack(tokenizer, ["a"], 1000)


@pytest.mark.parametrize("arch", ["llama", "deepseek_v2"])
def test_cli_trains_saves_reloads_and_resumes(tmp_path, arch):
    model_dir, out = tmp_path / "model", tmp_path / "out"
    tiny_folder(model_dir, arch)
    data = tmp_path / "data.txt"
    data.write_text(text(40, 5) * 30)                                      # a repeated sequence: learnable
    args = ["--model", str(model_dir), "--data", str(data), "--out", str(out), "--window", "8", "--group", "4",
            "--seq-len", "48", "--batch-size", "2", "--grad-accum", "2", "--lr", "3e-3", "--warmup", "1",
            "--save-every", "3", "--device", "cpu"]
    finetune.main(args + ["--steps", "5"])
    reloaded = transformers.AutoModelForCausalLM.from_pretrained(out)
    assert os.path.exists(out / "checkpoint-3" / "trainer_state.pt")
    assert transformers.AutoTokenizer.from_pretrained(out).eos_token_id is not None
    original = transformers.AutoModelForCausalLM.from_pretrained(model_dir)
    changed = [not torch.equal(a, b) for a, b in zip(original.state_dict().values(), reloaded.state_dict().values())]
    assert any(changed)

    finetune.main(args + ["--steps", "7", "--resume", str(out), "--out", str(tmp_path / "resumed")])
    state = torch.load(tmp_path / "resumed" / "trainer_state.pt")
    assert state["step"] == 7


def test_loss_decreases_on_repeated_sequence(tmp_path):
    model, tokenizer = tiny_folder(tmp_path)
    import lca

    lca.patch(model, window=8, group=4)
    rows = finetune.pack(tokenizer, [text(30, 9) * 4], 32)[:1].repeat(4, 1)
    losses = finetune.train(model, rows, steps=5, lr=3e-3, warmup=1, batch_size=2)
    assert len(losses) == 5 and losses[-1] < losses[0] - 0.1
    with pytest.raises(ValueError, match="steps"):
        finetune.train(model, rows, steps=0)


def test_task_documents_as_padded_rows(tmp_path):
    _, tokenizer = tiny_folder(tmp_path)
    path = tmp_path / "tasks.jsonl"
    path.write_text('{"text": "alpha bravo"}\n\n{"text": "' + "charlie " * 40 + '"}\n')
    documents = finetune.load_documents([path])
    assert documents[0] == "alpha bravo" and len(documents) == 2
    ids, labels = finetune.rows(tokenizer, documents, 12)
    first = tokenizer("alpha bravo", add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    assert ids[0, : len(first)].tolist() == first and labels[0, : len(first)].tolist() == first
    assert (labels[0, len(first):] == -100).all() and (ids[0, len(first):] == tokenizer.pad_token_id).all()
    assert (labels[1] != -100).all()                                       # cut to seq_len, no padding
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"txt": 1}\n')
    with pytest.raises(ValueError, match="text"):
        finetune.load_documents([bad])


def test_cli_trains_on_task_data(tmp_path):
    model_dir = tmp_path / "model"
    tiny_folder(model_dir)
    path = tmp_path / "tasks.jsonl"
    path.write_text("".join('{"text": "%s"}\n' % text(20, i) for i in range(4)))
    finetune.main(["--model", str(model_dir), "--task-data", str(path), "--out", str(tmp_path / "out"), "--steps", "2",
                   "--seq-len", "64", "--window", "8", "--group", "4", "--grad-accum", "1", "--device", "cpu"])
    assert (tmp_path / "out" / "config.json").exists()
    with pytest.raises(ValueError, match="data"):
        finetune.main(["--model", str(model_dir), "--out", str(tmp_path / "o2"), "--device", "cpu"])


def _ddp_worker(rank, world, port, sequences, out):
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    model = _tiny_llama()
    finetune.train(model, sequences, steps=3, batch_size=1, grad_accum=2, warmup=0, lr=1e-2)
    if rank == 0:
        torch.save(model.state_dict(), out)
    dist.destroy_process_group()


def _tiny_llama():
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                                      num_key_value_heads=2, intermediate_size=64, max_position_embeddings=64)
    return transformers.AutoModelForCausalLM.from_config(config)


def test_distributed_equals_one_process_on_the_same_rows(tmp_path):
    """Two processes (gloo, CPU) with batch 1 x accumulation 2 each take the rows one process with
    batch 2 x accumulation 2 takes, and DDP averages their gradients: the same weights after 3 steps."""
    import socket

    import torch.multiprocessing as mp

    sequences = torch.randint(0, 50, (16, 12), generator=torch.Generator().manual_seed(1))
    single = _tiny_llama()
    finetune.train(single, sequences, steps=3, batch_size=2, grad_accum=2, warmup=0, lr=1e-2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp.pt"
    mp.spawn(_ddp_worker, args=(2, port, sequences, str(out)), nprocs=2)
    ddp = torch.load(out)
    moved = max((single.state_dict()[k] - _tiny_llama().state_dict()[k]).abs().max().item() for k in ddp)
    error = max((single.state_dict()[k] - ddp[k]).abs().max().item() for k in ddp)
    assert moved > 1e-3 and error < 1e-5


def test_time_budget_sets_the_step_count(tmp_path):
    sequences = torch.randint(0, 50, (16, 12), generator=torch.Generator().manual_seed(1))
    losses = finetune.train(_tiny_llama(), sequences, steps=100000, batch_size=1, warmup=0, time_budget=2.0)
    assert 13 < len(losses) < 100000
    with pytest.raises(ValueError, match="time_budget"):
        finetune.train(_tiny_llama(), sequences, steps=3, time_budget=0)


def test_pack_encodes_long_texts_in_pieces_exactly(tmp_path):
    _, tokenizer = tiny_folder(tmp_path)
    long = "\n".join(text(30, seed) + ("\n\n    indented" if seed % 3 == 0 else "") for seed in range(200))
    pieces = list(finetune._pieces(long, size=500))
    assert len(pieces) > 5 and "".join(pieces) == long
    whole = tokenizer(long, add_special_tokens=False)["input_ids"]
    assert sum((tokenizer(p, add_special_tokens=False)["input_ids"] for p in pieces), []) == whole


def test_answer_loss_rows_label_only_the_answer(tmp_path):
    _, tokenizer = tiny_folder(tmp_path)
    prompt, answer = text(40, 3) + " The value is:", " 1234 5678."
    ids, labels = finetune.rows(tokenizer, [prompt + answer], 256, [len(prompt)])
    n_prompt = len(tokenizer(prompt, add_special_tokens=False)["input_ids"])
    n_all = len(tokenizer(prompt + answer, add_special_tokens=False)["input_ids"]) + 1  # EOS
    assert (labels[0, :n_prompt] == -100).all()
    assert (labels[0, n_prompt:n_all] == ids[0, n_prompt:n_all]).all() and n_all > n_prompt
    assert (labels[0, n_all:] == -100).all()
    assert tokenizer.decode(ids[0, n_prompt:n_all - 1]).strip() == answer.strip()
    with pytest.raises(ValueError, match="answer_start"):
        finetune.rows(tokenizer, [prompt + answer], 128, [None])
