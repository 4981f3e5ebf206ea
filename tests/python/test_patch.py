"""lca.patch on tiny random Llama, Qwen2 and DeepSeek-V2 models: equal logits while no group is
condensed, different ones after, exact restore by unpatch, gradients through the patched attention."""

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")

import lca  # noqa: E402
from lca.make_model import make_config, make_model  # noqa: E402

ARCHS = ["llama", "qwen2", "deepseek_v2"]


def tiny(arch):
    config = make_config(arch, 100, hidden=64, layers=2, heads=4, kv_heads=2, intermediate=96, max_positions=256)
    return make_model(config, seed=3).eval()


def logits(model, ids):
    with torch.no_grad():
        return model(ids, use_cache=False).logits


@pytest.mark.parametrize("arch", ARCHS)
def test_patch_identity_and_difference(arch):
    model = tiny(arch)
    ids = torch.randint(0, 100, (2, 40))
    original = logits(model, ids)
    lca.patch(model, window=64, group=4)                        # 40 <= w + g - 1: nothing condensed
    torch.testing.assert_close(logits(model, ids), original, rtol=1e-4, atol=1e-4)
    lca.patch(model, window=1, group=1)                         # g = 1: every token is its own representative
    torch.testing.assert_close(logits(model, ids), original, rtol=1e-4, atol=1e-4)
    for options in (dict(window=8, group=4), dict(window=8, group=4, pool="anchor"), dict(window=8, group=4, pool="drop")):
        lca.patch(model, **options)
        changed = logits(model, ids)
        assert changed.shape == original.shape and torch.isfinite(changed).all()
        # positions before w + g see no condensed group, later ones do
        torch.testing.assert_close(changed[:, :11], original[:, :11], rtol=1e-4, atol=1e-4)
        assert (changed[:, 12:] - original[:, 12:]).abs().max() > 1e-3
    lca.unpatch(model)
    assert torch.equal(logits(model, ids), original)
    assert not lca.is_patched(model)


@pytest.mark.parametrize("arch", ARCHS)
def test_patch_adds_no_parameters_and_gradients_flow(arch):
    model = tiny(arch).train()
    names = sorted(model.state_dict())
    lca.patch(model, window=4, group=4)
    assert sorted(model.state_dict()) == names
    ids = torch.randint(0, 100, (1, 30))
    loss = model(ids, labels=ids, use_cache=False).loss
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert all(g is not None and torch.isfinite(g).all() for g in grads)
    attention = [m for m in model.modules() if hasattr(m, "_lca_options")][0]
    assert any(p.grad.abs().sum() > 0 for p in attention.parameters())


def test_patch_bad_arguments():
    model = tiny("llama")
    for kwargs, name in ((dict(window=-1), "window"), (dict(group=0), "group"), (dict(key_mode="x"), "key_mode"),
                         (dict(pool="x"), "pool"), (dict(score="x"), "score"), (dict(impl="x"), "impl")):
        with pytest.raises(ValueError, match=name):
            lca.patch(model, **kwargs)
    with pytest.raises(ValueError, match="model"):
        lca.patch(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not patched"):
        lca.unpatch(model)


def test_patched_model_refuses_a_kv_cache():
    model = lca.patch(tiny("llama"), window=4, group=2)
    ids = torch.randint(0, 100, (1, 12))
    with torch.no_grad():
        out = model(ids, use_cache=True)
        with pytest.raises(ValueError, match="use_cache=False"):
            model(ids[:, :1], past_key_values=out.past_key_values, use_cache=True)
