import numpy as np
import pytest

from tvm_lut.sentiment import (
    accuracy,
    batch_latency_ms,
    cosines,
    embed,
    mean_cosine,
    torch_encoder,
    train_head,
    vm_encoder,
)


class RecordingEncoder:
    """Embeds a row as (sum of ids, number of tokens) and records the batch shapes it was fed."""

    def __init__(self):
        self.shapes = []

    def __call__(self, ids, mask):
        self.shapes.append(ids.shape)
        return np.stack([(ids * mask).sum(1), mask.sum(1)], axis=1)


def test_embed_feeds_full_batches_and_trims_padding():
    rng = np.random.default_rng(0)
    ids = rng.integers(1, 100, size=(11, 6))
    mask = np.ones_like(ids)
    encoder = RecordingEncoder()
    out = embed(encoder, ids, mask, batch_size=4, progress=False)
    assert encoder.shapes == [(4, 6)] * 3
    assert out.dtype == np.float32 and out.shape == (11, 2)
    np.testing.assert_array_equal(out[:, 0], ids.sum(1))


def test_embed_misuse():
    ids = np.zeros((3, 4), np.int64)
    with pytest.raises(ValueError, match="batch_size must be positive"):
        embed(RecordingEncoder(), ids, ids, batch_size=0, progress=False)
    with pytest.raises(ValueError, match="must be equal 2-D"):
        embed(RecordingEncoder(), ids, ids[:, :2], progress=False)
    with pytest.raises(ValueError, match="no rows to embed"):
        embed(RecordingEncoder(), ids[:0], ids[:0], progress=False)


def test_torch_encoder_matches_module():
    model = lambda ids, mask: (ids * mask).float().sum(1, keepdim=True)  # noqa: E731
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    np.testing.assert_array_equal(torch_encoder(model)(ids, np.ones_like(ids)), [[3.0], [12.0]])


def test_vm_encoder_runs_compiled_module():
    import tvm
    from tvm.script import ir as I
    from tvm.script import relax as R

    @I.ir_module
    class Masked:
        @R.function
        def main(ids: R.Tensor((2, 3), "int64"), mask: R.Tensor((2, 3), "int64")):
            with R.dataflow():
                out = R.astype(R.multiply(ids, mask), "float32")
                R.output(out)
            return out

    encoder = vm_encoder(tvm.compile(Masked, target=tvm.target.Target({"kind": "llvm"})))
    ids = np.arange(6, dtype=np.int64).reshape(2, 3)
    mask = np.array([[1, 1, 0], [1, 0, 0]], np.int64)
    np.testing.assert_array_equal(encoder(ids, mask), ids * mask)
    assert batch_latency_ms(encoder, ids, mask, batch_size=2, repeats=2) > 0


def test_head_learns_separable_data_and_counts_nonfinite_as_wrong():
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 2, 400)
    x = rng.normal(size=(400, 8)) + 3.0 * labels[:, None]
    head = train_head(x, labels)
    assert accuracy(head, x, labels) > 0.95
    x_bad = x.copy()
    x_bad[: len(x) // 2] = np.nan
    assert accuracy(head, x_bad, labels) < 0.55


def test_head_misuse():
    with pytest.raises(ValueError, match="3 embeddings but 2 labels"):
        train_head(np.zeros((3, 2)), np.zeros(2))
    with pytest.raises(ValueError, match="NaN or inf"):
        train_head(np.array([[np.inf, 0.0], [0.0, 1.0]]), np.array([0, 1]))
    with pytest.raises(ValueError, match="as many embeddings as labels"):
        accuracy(None, np.zeros((0, 2)), np.zeros(0))


def test_cosines_edge_cases():
    a = np.array([[1.0, 0.0], [1.0, 1.0], [0.0, 0.0], [np.nan, 1.0], [1e30, 1e30]])
    b = np.array([[2.0, 0.0], [-1.0, -1.0], [1.0, 0.0], [1.0, 1.0], [1e30, 1e30]])
    c = cosines(a, b)
    np.testing.assert_allclose(c[[0, 1, 4]], [1.0, -1.0, 1.0])
    assert np.isnan(c[2]) and np.isnan(c[3])
    assert np.isnan(mean_cosine(a, b))
    assert mean_cosine(a[:2], a[:2]) == pytest.approx(1.0)
    with pytest.raises(ValueError, match="same 2-D shape"):
        cosines(a, b[:2])
