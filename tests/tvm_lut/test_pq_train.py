"""Centroid learning end to end on tiny models: the loss falls, checkpoints resume exactly, and the bundle of
`tvm_lut.learn` finds its weights in graphs imported from torch.export and ONNX."""

import copy

import numpy as np
import pytest
import torch
from torch import nn

import tvm_lut
from tvm_lut.pq.calibrate import init_centroids
from tvm_lut.pq.config import PQConfig
from tvm_lut.pq.handler import learn_pq
from tvm_lut.pq.reference import pq_forward
from tvm_lut.pq.swap import quantize_, unswap_
from tvm_lut.pq.train import FeatureTap, TeacherTargets, feature_loss, lr_factor, train_centroids


def tiny_task(seed=0, n=256):
    """A 3-class problem a small MLP solves; labels from a fixed random teacher."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=gen)
    y = (x @ torch.randn(8, 3, generator=gen)).argmax(1)
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-2)
    for _ in range(60):
        optimizer.zero_grad()
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
    return model.eval(), [(x[i:i + 32], y[i:i + 32]) for i in range(0, n, 32)]


def test_learning_lowers_the_loss_and_moves_the_temperature():
    model, batches = tiny_task()
    result = learn_pq(model, batches, PQConfig(V=2, K=4, epochs=6, lr=1e-2), progress=False)
    losses = result.history.loss
    assert np.mean(losses[-8:]) < np.mean(losses[:8])
    assert all(len(t) == len(losses) for t in result.history.temperature.values())
    assert any(abs(t[-1] - t[0]) > 1e-3 for t in result.history.temperature.values())


def test_bundle_tables_reproduce_the_trained_layers(tmp_path):
    model, batches = tiny_task()
    result = learn_pq(model, batches, PQConfig(V=4, epochs=1), progress=False)
    result.bundle.save(tmp_path / "pq.safetensors")
    bundle = tvm_lut.Bundle.load(tmp_path / "pq.safetensors")
    assert bundle.provenance["pq_replaced"] == result.report.replaced
    x = batches[0][0]
    hidden = torch.relu(pq_forward(x, bundle["0"]))
    with torch.no_grad():
        torch.testing.assert_close(pq_forward(hidden, bundle["2"]), result.model(x), rtol=1e-4, atol=1e-4)


class Stop(Exception):
    pass


class StoppingTeacher(nn.Module):
    """The FP32 model, raising `Stop` on its call number `stop_at` (a run killed mid-epoch)."""

    def __init__(self, model, stop_at):
        super().__init__()
        self.model, self.stop_at, self.calls = model, stop_at, 0

    def forward(self, *args):
        self.calls += 1
        if self.calls == self.stop_at:
            raise Stop
        return self.model(*args)


def test_checkpoint_resume_gives_the_same_result(tmp_path):
    model, batches = tiny_task()
    config = PQConfig(V=2, K=4, epochs=2, lr=1e-2)

    def prepared():
        student = copy.deepcopy(model)
        quantize_(student, config)
        init_centroids(student, batches, config, progress=False)
        return student

    straight = prepared()
    train_centroids(straight, model, batches, config, progress=False)

    path = tmp_path / "ckpt.safetensors"
    with pytest.raises(Stop):  # killed during step 4 of epoch 0; the checkpoint holds 3 steps
        train_centroids(prepared(), StoppingTeacher(model, 4), batches, config, checkpoint=path,
                        checkpoint_every=3, progress=False)
    with pytest.raises(ValueError, match="another PQConfig"):
        train_centroids(prepared(), model, batches, PQConfig(V=2, K=4, epochs=3), checkpoint=path, progress=False)
    resumed = prepared()
    history = train_centroids(resumed, model, batches, config, checkpoint=path, progress=False)
    assert len(history.loss) == 2 * len(batches)
    for (name, a), b in zip(straight.named_parameters(), resumed.parameters()):
        torch.testing.assert_close(a, b, msg=name)


def counting_teacher(model):
    """A copy of the FP32 model that counts its calls in `calls`."""
    teacher = copy.deepcopy(model)
    teacher.calls = 0

    def count(module, args):
        module.calls += 1

    teacher.register_forward_pre_hook(count)
    return teacher


def test_teacher_targets_run_the_teacher_once_per_batch_and_learn_as_without_them():
    model, batches = tiny_task()
    config = PQConfig(V=2, K=4, epochs=3, lr=1e-2, feature_distill=("1",))

    def learned(teacher, targets=None):
        student = copy.deepcopy(model)
        quantize_(student, config)
        init_centroids(student, batches, config, progress=False)
        history = train_centroids(student, teacher, batches, config, progress=False, teacher_targets=targets)
        return student, history

    uncached = counting_teacher(model)
    targets = TeacherTargets(uncached, config.feature_distill, max_bytes=0)  # nothing fits: every step runs it
    reference, reference_history = learned(uncached, targets)
    assert uncached.calls == 3 * len(batches) and not targets.saved
    teacher = counting_teacher(model)
    shared = TeacherTargets(teacher, config.feature_distill)
    for _ in range(2):  # a second run with the same targets (the autotuner's next trial) never runs the teacher
        student, history = learned(teacher, shared)
        assert teacher.calls == len(batches)
        assert history.loss == reference_history.loss and history.feature == reference_history.feature
        for (name, a), b in zip(reference.named_parameters(), student.parameters()):
            torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert not teacher[1]._forward_hooks  # the feature tap is gone
    with pytest.raises(ValueError, match="another teacher"):
        learned(counting_teacher(model), shared)
    other = [(x + 1, y) for x, y in batches]  # other inputs under the same batch numbers
    with pytest.raises(ValueError, match="is not the batch its teacher outputs"):
        train_centroids(copy.deepcopy(student), teacher, other, config, progress=False, teacher_targets=shared)
    with pytest.raises(ValueError, match="other feature_distill"):
        train_centroids(copy.deepcopy(student), teacher, batches, PQConfig(V=2, K=4, epochs=3, lr=1e-2),
                        progress=False, teacher_targets=shared)


def test_trainable_all_trains_weights_and_unswap_gives_an_exact_model_matching_the_bundle():
    model, batches = tiny_task()
    result = learn_pq(model, batches, PQConfig(V=4, epochs=2, lr=1e-2, trainable="all"), progress=False)
    assert not torch.equal(result.model[0].weight, model[0].weight)
    exact = unswap_(result.model)
    assert type(exact[0]) is nn.Linear and type(exact[2]) is nn.Linear
    assert result.bundle.find_pq(exact[0].weight)[0] == "0"


def test_importers_constants_match_the_bundle():
    """Every PQ entry is found by fingerprint among the weight constants of both imported graphs."""
    from tvm import ir, relax

    from tvm_lut.frontend import from_onnx, from_torch

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.Flatten(),
                          nn.Linear(4 * 5 * 5, 6)).eval()
    x = torch.randn(8, 2, 5, 5)
    bundle = tvm_lut.learn(model, [x], PQConfig(V=4), progress=False)
    assert set(bundle) == {"0", "2", "4"}
    for mod in (from_torch(model, (x[:1],)), from_onnx(model, example_args=(x[:1],))):
        constants = []
        relax.analysis.post_order_visit(mod["main"], lambda e: constants.append(e.value.numpy())
                                        if isinstance(e, ir.Constant) and hasattr(e.value, "numpy") else None)
        found = {match[0] for match in map(bundle.find_pq, constants) if match is not None}
        assert found == set(bundle)


def test_learn_misuse():
    with pytest.raises(ValueError, match="no calibration batches"):
        learn_pq(nn.Linear(4, 4), [], PQConfig(V=2), progress=False)
    with pytest.raises(ValueError, match="no layer of the model can be served"):
        learn_pq(nn.Linear(5, 4), [torch.randn(2, 5)], PQConfig(V=2), progress=False)
    with pytest.raises(TypeError, match="a batch is a tensor"):
        learn_pq(nn.Sequential(nn.Linear(4, 4)), [{"x": 1}], PQConfig(V=2), progress=False)


def test_feature_distillation_taps_the_named_modules_and_is_zero_on_equal_outputs():
    model, batches = tiny_task()
    tap = FeatureTap(model, ("1",))
    model(batches[0][0])
    assert set(tap.outputs) == {"1"} and tap.outputs["1"].shape == (32, 16)
    tap.remove()
    assert feature_loss(tap.outputs, tap.outputs).item() == 0
    assert feature_loss({"1": 2 * tap.outputs["1"]}, tap.outputs).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="matches no module"):
        FeatureTap(model, ("encoder",))
    result = learn_pq(model, batches, PQConfig(V=4, epochs=2, lr=1e-2, feature_distill=("1",), feature_weight=5.0),
                      progress=False)
    assert np.mean(result.history.feature[-4:]) < result.history.feature[0]
    assert not model._forward_hooks and not model[1]._forward_hooks and not result.model[1]._forward_hooks


def test_learning_rate_schedule_warms_up_then_decays():
    config = PQConfig(warmup_steps=4, lr_schedule="cosine")
    factors = [lr_factor(step, 12, config) for step in range(12)]
    assert factors[:4] == [0.25, 0.5, 0.75, 1.0]
    assert factors[4] == 1.0 and all(a > b for a, b in zip(factors[4:], factors[5:])) and factors[-1] > 0
    assert [lr_factor(step, 12, PQConfig()) for step in (0, 11)] == [1.0, 1.0]


def test_weight_lr_is_the_step_of_the_non_pq_weights():
    model, batches = tiny_task()
    weights = {}
    for weight_lr in (1e-6, 1e-2):
        result = learn_pq(model, batches, PQConfig(V=4, epochs=1, lr=1e-2, trainable="all", weight_lr=weight_lr),
                          progress=False)
        weights[weight_lr] = (result.model[0].weight - model[0].weight).abs().max().item()
    assert weights[1e-6] < 1e-4 < weights[1e-2]
