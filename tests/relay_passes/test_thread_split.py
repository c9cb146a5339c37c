"""Attention at one sequence splits by heads, so LUTDense gives the Q, K and V projections lookups that split their
outputs the same way (`relay_passes.thread_split`), on graphs from both importers; every other layer, and every
layer at a batch attention splits by rows anyway or at one thread, keeps the row split. The results do not
change."""

import numpy as np
import pytest
import torch
import tvm
from tvm import relax

from relay_passes import LUTDense
from relay_passes import thread_split
from schedules import host_target
from schedules.kernels.pq_lookup import SPLIT_ATTR
from tvm_lut.bundle import Bundle
from tvm_lut.frontend import from_onnx, from_torch
from tvm_lut.pq.table import PQTable

SEQUENCE = 16  # rows per sequence: more than the few-row kernels take


@pytest.fixture(scope="module")
def bert_and_bundle():
    """A one-layer, two-head MiniLM (hidden 32) with random weights, and random PQ tables for all its Linears."""
    from tvm_lut.models.minilm import MiniLM, MiniLMConfig

    config = MiniLMConfig(vocab_size=64, hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                          intermediate_size=64, max_position_embeddings=SEQUENCE)
    torch.manual_seed(0)
    model, rng = MiniLM(config, output="tokens").eval(), np.random.default_rng(0)
    entries = {}
    for name, layer in model.named_modules():
        if isinstance(layer, torch.nn.Linear):
            centroids = rng.standard_normal((layer.in_features // 4, 16, 4)).astype(np.float32)
            entries[name] = PQTable.from_weight(centroids, layer.weight.detach().numpy(),
                                                layer.bias.detach().numpy())
    return model, Bundle(entries)


def _imported(model, importer, batch):
    ids = torch.randint(1, 64, (batch, SEQUENCE), generator=torch.Generator().manual_seed(batch))
    inputs = (ids, torch.ones(batch, SEQUENCE, dtype=torch.int64))
    mod = from_torch(model, inputs) if importer == "torch" else from_onnx(model, example_args=inputs)
    return mod, inputs


def _splits(mod) -> dict[str, int]:
    """How many PQ lookup calls of `main` split which way: {'rows': 3, 'outputs': 3}."""
    counts: dict[str, int] = {}
    for block in mod["main"].body.blocks:
        for binding in block.bindings:
            value = binding.value
            if not (isinstance(value, relax.Call) and isinstance(value.args[0], tvm.ir.GlobalVar)):
                continue
            func = mod[value.args[0]]
            if isinstance(func, tvm.tirx.PrimFunc) and func.attrs is not None and SPLIT_ATTR in func.attrs:
                split = str(func.attrs[SPLIT_ATTR])
                counts[split] = counts.get(split, 0) + 1
    return counts


def _run(mod, inputs, target):
    vm = relax.VirtualMachine(tvm.compile(mod, target=target), tvm.cpu())
    return vm["main"](*[tvm.runtime.tensor(a.numpy()) for a in inputs]).numpy()


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_at_one_sequence_the_layers_beside_attention_split_by_heads(bert_and_bundle, importer, monkeypatch):
    model, bundle = bert_and_bundle
    mod, inputs = _imported(model, importer, batch=1)
    target = host_target(2)
    rewritten = LUTDense(bundle, target=target)(mod)
    # Q, K and V are read by heads: their lookups split the outputs. The attention output and feed-forward layers:
    # rows.
    assert _splits(rewritten) == {"outputs": 3, "rows": 3}

    monkeypatch.setattr(thread_split.Dataflow, "read_by_columns", lambda self, output: False)
    by_rows = LUTDense(bundle, target=target)(mod)
    assert _splits(by_rows) == {"rows": 6}
    np.testing.assert_array_equal(_run(rewritten, inputs, target), _run(by_rows, inputs, target))


@pytest.mark.parametrize("importer", ["torch", "onnx"])
def test_a_batch_attention_splits_by_rows_keeps_the_row_split(bert_and_bundle, importer):
    """Two sequences at two threads: attention's batch axis leads, so each thread reads its own rows already."""
    model, bundle = bert_and_bundle
    mod, _ = _imported(model, importer, batch=2)
    assert _splits(LUTDense(bundle, target=host_target(2))(mod)) == {"rows": 6}


def test_one_thread_keeps_the_row_split(bert_and_bundle):
    model, bundle = bert_and_bundle
    mod, _ = _imported(model, "torch", batch=1)
    assert _splits(LUTDense(bundle, target=host_target(1))(mod)) == {"rows": 6}
