"""The sensitivity stage: one exact forward serves every layer (row samples, the outputs of what runs before it),
and each layer's proxies equal those of the plain definition (the whole model run with only that layer PQ, k-means
centroids) on models with labels and without, a ModuleList of blocks, in-place ReLUs and a conv."""

import pytest
import torch
from torch import nn

from tvm_lut.autotuning import sensitivity
from tvm_lut.autotuning.layers import EXACT, Choice, find_layers
from tvm_lut.autotuning.config import AutotuneConfig

CHOICES = [EXACT, Choice(8, 2), Choice(16, 4)]


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.fc, self.act = nn.Linear(width, width), nn.ReLU(inplace=True)

    def forward(self, x):
        return x + self.act(self.fc(x))


class Net(nn.Module):
    """A conv stem with an in-place ReLU, a ModuleList of residual blocks (each called with a keyword), a head."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.relu = nn.ReLU(inplace=True)
        self.blocks = nn.ModuleList(Block(16) for _ in range(3))
        self.head = nn.Linear(16, 5)

    def forward(self, x):
        h = self.relu(self.conv(x)).mean((2, 3)).repeat(1, 4)
        for block in self.blocks:
            h = block(x=h)
        return self.head(h)


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # tests/conftest.py


def _setup(labelled: bool):
    torch.manual_seed(0)
    model = Net().eval()
    batches = [(torch.randn(8, 4, 6, 6), torch.randint(0, 5, (8,))) for _ in range(3)]
    if not labelled:
        batches = [((x,), None) for x, _ in batches]
    specs, _ = find_layers(model, (batches[0][0] if labelled else batches[0][0][0],),
                           AutotuneConfig(K=(8, 16), V=(2, 4)))
    return model, batches, specs


def _plain(model, batches, specs, measured):
    """Each layer's task-loss proxy by definition: the whole model, only that layer PQ with the measured centroids."""
    from tvm_lut.batches import split_batch

    with torch.no_grad():
        reference = [model(*split_batch(b)[0]).flatten(0, -2) for b in batches]
        labelled = split_batch(batches[0])[1] is not None
        baseline = sensitivity.task_loss(model, batches, None if labelled else reference)
        return {(spec.name, c.label): sensitivity.task_loss(
            sensitivity.kmeans_model(model, {spec.name: c}, measured), batches, None if labelled else reference)
            - baseline for spec in specs for c in CHOICES if not c.exact}


@pytest.mark.parametrize("labelled", [True, False])
def test_proxies_match_the_whole_model_with_one_layer_pq(labelled):
    model, batches, specs = _setup(labelled)
    assert [s.name for s in specs] == ["conv", "blocks.0.fc", "blocks.1.fc", "blocks.2.fc", "head"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    measured = sensitivity.measure(model, specs, {s.name: CHOICES for s in specs}, batches, kmeans_rows=256,
                                   kmeans_iters=5, progress=False)
    plain = _plain(model, batches, specs, measured)
    for (name, label), expected in plain.items():
        assert measured.proxies[name][label]["task_loss"] == pytest.approx(expected, rel=1e-4, abs=1e-6), name
        assert measured.proxies[name][label]["output_error"] > 0
    assert any(abs(v) > 1e-4 for v in plain.values())  # the comparison is not between zeros
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())  # the model is left as it was
    assert all("forward" not in vars(m) for m in model.modules())  # no replayed forward left behind


def test_one_exact_forward_serves_every_layer(monkeypatch):
    """The stem runs once per batch in the exact pass and once in the gradient pass (plus one probe of the call
    order), never again: every layer's task loss replays it."""
    model, batches, specs = _setup(True)
    calls = {"n": 0}
    convolve = model.conv._conv_forward  # what Conv2d.forward computes with (hooks fire for a replay too)

    def counted(*args):
        calls["n"] += 1
        return convolve(*args)

    monkeypatch.setattr(model.conv, "_conv_forward", counted)
    pq_after_stem = {s.name: (CHOICES if s.name != "conv" else [EXACT]) for s in specs}
    sensitivity.measure(model, specs, pq_after_stem, batches, kmeans_rows=256, kmeans_iters=5, progress=False)
    assert calls["n"] == 2 * len(batches) + 1
    cached = sensitivity.exact_pass(model, {"blocks.1.fc": 0}, batches, kmeans_rows=64)
    assert sorted(cached.prefix["blocks.1.fc"]) == ["blocks.0", "conv", "relu"]


def test_resume_measures_only_the_missing_layers(tmp_path, monkeypatch):
    model, batches, specs = _setup(True)
    options = {s.name: CHOICES for s in specs}
    whole = sensitivity.measure(model, specs, options, batches, kmeans_rows=256, kmeans_iters=5, progress=False)
    first = sensitivity.measure(model, specs[:2], options, batches, kmeans_rows=256, kmeans_iters=5,
                                out_dir=tmp_path, progress=False)
    assert set(first.proxies) == {"conv", "blocks.0.fc"}
    losses = {"n": 0}
    monkeypatch.setattr(sensitivity, "task_loss", lambda *a, **k: losses.__setitem__("n", losses["n"] + 1) or 0.0)
    resumed = sensitivity.measure(model, specs, options, batches, kmeans_rows=256, kmeans_iters=5, out_dir=tmp_path,
                                  progress=False)
    assert losses["n"] == 2 * 3  # two PQ choices of the three layers left
    assert resumed.proxies["conv"] == whole.proxies["conv"]
    for name in ("blocks.1.fc", "head"):  # the same rows sampled and clustered as in one uninterrupted run
        assert resumed.proxies[name][CHOICES[1].label]["output_error"] == \
            pytest.approx(whole.proxies[name][CHOICES[1].label]["output_error"], rel=1e-5)


def test_fisher_weights_the_output_error_by_the_loss_gradient(monkeypatch):
    """`output_fisher` equals the squared gradient of each batch's loss at the layer's output channels (summed over
    rows, averaged over batches), taken by hand; without the task loss no per-choice forward pass runs, and the
    weights' requires_grad flags are left as they were."""
    model, batches, specs = _setup(True)
    for p in model.parameters():
        p.requires_grad_(False)
    fisher = sensitivity.output_fisher(model, ["conv", "blocks.1.fc"], batches, None)
    expected = {"conv": 0.0, "blocks.1.fc": 0.0}
    for x, y in batches:
        kept = {}
        handles = [model.get_submodule(n).register_forward_hook(
            lambda _m, _a, out, n=n: kept.__setitem__(n, out)) for n in expected]
        with torch.enable_grad():
            x = x.clone().requires_grad_(True)
            loss = nn.functional.cross_entropy(model(x), y)
            grads = torch.autograd.grad(loss, [kept[n] for n in expected])
        for handle in handles:
            handle.remove()
        expected["conv"] = expected["conv"] + (grads[0] ** 2).sum((0, 2, 3)) / len(batches)
        expected["blocks.1.fc"] = expected["blocks.1.fc"] + (grads[1] ** 2).sum(0) / len(batches)
    for name, value in expected.items():
        torch.testing.assert_close(fisher[name], value, rtol=1e-4, atol=1e-10)
    assert not any(p.requires_grad for p in model.parameters())

    monkeypatch.setattr(sensitivity, "task_loss", lambda *a, **k: pytest.fail("no task loss was asked for"))
    cheap = sensitivity.measure(model, specs, {s.name: CHOICES for s in specs}, batches, kmeans_rows=256,
                                kmeans_iters=5, progress=False, with_task_loss=False)
    assert all(set(v) == {"output_error", "fisher"} and v["fisher"] > 0 for p in cheap.proxies.values()
               for v in p.values())


@pytest.mark.parametrize("labelled", [True, False])
def test_restore_effects_match_the_whole_model_with_one_layer_exact_again(labelled):
    """On a model with every layer PQ, each layer's effect (computed from the layer onward) is the loss the whole
    model saves with that layer alone exact again; without labels the loss is the KL to the exact model's outputs."""
    from tvm_lut.autotuning.driver import _with_exact
    from tvm_lut.batches import split_batch

    model, batches, specs = _setup(labelled)
    choices = {s.name: [EXACT, Choice(8, 2)] for s in specs}
    measured = sensitivity.measure(model, specs, choices, batches, kmeans_rows=256, kmeans_iters=5, progress=False)
    pq_model = sensitivity.kmeans_model(model, {s.name: Choice(8, 2) for s in specs}, measured)
    names = [s.name for s in specs]
    effects = sensitivity.restore_effects(pq_model, names, batches, lambda n: _with_exact(pq_model, [n]), model)
    with torch.no_grad():
        reference = None if labelled else [model(*split_batch(b)[0]).flatten(0, -2) for b in batches]
        base = sensitivity.task_loss(pq_model, batches, reference)
        for name in names:
            expected = base - sensitivity.task_loss(_with_exact(pq_model, [name]), batches, reference)
            assert effects[name] == pytest.approx(expected, rel=1e-4, abs=1e-6), name
    assert any(abs(v) > 1e-4 for v in effects.values())
    assert all("forward" not in vars(m) for m in pq_model.modules())
