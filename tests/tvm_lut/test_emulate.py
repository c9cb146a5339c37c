"""LUTMode: the torch emulation matches the NumPy reference bit for bit and computes the ops as the kernels do."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from tvm_lut.bundle import Bundle
from tvm_lut.defaults import default_bundle
from tvm_lut.emulate import LUTMode, evaluate_table

EDGES = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 1e-45, -1e-45, 1e-40, 1.17e-38, 3.4e38, -3.4e38, 1, 2, 4, -16],
                 dtype=np.float32)


@pytest.mark.parametrize("name", ["gelu", "exp", "reciprocal", "rsqrt"])
def test_torch_evaluation_is_the_numpy_reference_bit_for_bit(name):
    table = default_bundle().pwl(name)
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(0, 4, 5000), np.exp(rng.uniform(-80, 80, 2000)) * rng.choice([-1, 1], 2000),
                        table.breakpoints, EDGES]).astype(np.float32)
    expected = table(x)
    actual = evaluate_table(table, torch.from_numpy(x)).numpy()
    np.testing.assert_array_equal(actual, expected)
    assert evaluate_table(table, torch.zeros(0, 3)).shape == (0, 3)


class Ops(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.norm = torch.nn.LayerNorm(16)

    def forward(self, x):
        return self.norm(F.gelu(x) + torch.softmax(x, -1) + F.softmax(x, dim=1) + x.softmax(-1))


def test_model_under_lut_mode_stays_close_and_differs_from_exact():
    torch.manual_seed(0)
    model, x = Ops(), torch.randn(8, 16) * 2
    with torch.no_grad():
        exact = model(x)
        mode = LUTMode(default_bundle())
        with mode:
            approx = model(x)
    assert not mode.kept
    assert 0 < (approx - exact).abs().max() < 2e-2


def test_each_op_is_computed_from_its_tables():
    tables = default_bundle()
    x = torch.randn(4, 16) * 3
    with LUTMode(tables, ops=("softmax",)):
        y = torch.softmax(x, dim=-1)
    e = evaluate_table(tables.pwl("exp"), x - x.amax(-1, keepdim=True))
    torch.testing.assert_close(y, e * evaluate_table(tables.pwl("reciprocal"), e.sum(-1, keepdim=True)), rtol=0, atol=0)
    weight, bias = torch.randn(16), torch.randn(16)
    with LUTMode(tables, ops=("layer_norm",)):
        y = F.layer_norm(x, (16,), weight, bias, eps=1e-5)
    centered = x - x.mean(-1, keepdim=True)
    r = evaluate_table(tables.pwl("rsqrt"), x.var(-1, unbiased=False, keepdim=True) + 1e-5)
    torch.testing.assert_close(y, centered * r * weight + bias)
    with LUTMode(tables, ops=("layer_norm",)):  # ops not listed stay exact
        torch.testing.assert_close(F.gelu(x), F.gelu(x.clone()), rtol=0, atol=0)


def test_missing_tables_keep_ops_exact_and_say_so():
    only_gelu = Bundle({"gelu": default_bundle().pwl("gelu")})
    x = torch.randn(3, 5)
    mode = LUTMode(only_gelu)
    with mode:
        y = torch.softmax(x, -1)
        z = F.gelu(x, approximate="tanh")
    torch.testing.assert_close(y, torch.softmax(x, -1), rtol=0, atol=0)
    torch.testing.assert_close(z, F.gelu(x, approximate="tanh"), rtol=0, atol=0)
    assert mode.kept == {"exp: no table in the bundle", "reciprocal: no table in the bundle",
                         "gelu_tanh: no table in the bundle"}


def test_unknown_op_is_rejected():
    with pytest.raises(ValueError, match="unknown ops \\['relu'\\]"):
        LUTMode(default_bundle(), ops=("relu",))


@pytest.mark.slow
def test_minilm_on_tweets_keeps_embeddings_and_accuracy():
    """Real model, real tweets: every GELU, softmax and LayerNorm on 16-entry tables (shipped defaults and
    tables calibrated on 64 calibration tweets) keeps mean cosine >= 0.999 and accuracy within 0.3 points."""
    from tvm_lut.datasets.tweets import load_tweets
    from tvm_lut.models.minilm import load_minilm
    from tvm_lut.sentiment import accuracy, embed, torch_encoder, train_head
    from tvm_lut.training import NonlinearConfig, learn

    model, tweets = load_minilm(), load_tweets()
    train, test = tweets.train.head(2000), tweets.test.head(1000)
    exact = torch_encoder(model)
    head = train_head(embed(exact, *train.tokens(64), batch_size=32, progress=False), train.labels)
    reference = embed(exact, *test.tokens(64), batch_size=32, progress=False)
    calib_ids, calib_mask = (torch.from_numpy(a) for a in tweets.calibration.head(64).tokens(64))
    calibrated = learn(model, [((calib_ids[i:i + 32], calib_mask[i:i + 32]), None) for i in (0, 32)],
                       NonlinearConfig(), progress=False)
    for bundle in (default_bundle(), calibrated):
        mode = LUTMode(bundle)

        def lut(ids, mask):
            with mode:
                return exact(ids, mask)

        approx = embed(lut, *test.tokens(64), batch_size=32, progress=False)
        cosine = np.sum(approx * reference, 1) / np.linalg.norm(approx, axis=1) / np.linalg.norm(reference, axis=1)
        assert cosine.mean() >= 0.999 and not mode.kept, f"mean cosine {cosine.mean():.6f}, kept {mode.kept}"
        drop = accuracy(head, reference, test.labels) - accuracy(head, approx, test.labels)
        assert abs(drop) <= 0.003, f"accuracy changed by {drop:.4f}"
