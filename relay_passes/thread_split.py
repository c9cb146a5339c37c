"""Which way the kernels that read a dense layer's output split it between threads.

A parallel kernel gives each thread a contiguous range of its outermost parallel axis, and a thread should read
what it wrote itself: a line the other thread wrote crosses between the cores' caches (between dies, on hosts
whose two vCPUs sit on two). The PQ lookups split by rows, as LayerNorm, softmax and the elementwise kernels do.
Attention over a batch of one splits by heads instead: its batched matmuls run their leading batch axes in
parallel, and the heads are columns of the Q, K and V projections' outputs. Their lookups then split the outputs
(`split_outputs`): MiniLM at one sentence, two threads, AMD EPYC znver4, interleaved in one process: 1.592 ->
1.461 ms a call with the vCPUs on two dies, 1.140 -> 1.122 ms on one L3. (The encode that reads attention's
output by heads keeps the row split: splitting its codebooks, so that it reads only what its thread wrote, made
the same model slower, 1.486 -> 1.556 ms on two dies.)

`Dataflow.read_by_columns` tells for one dense layer, by following the layout ops (reshape, permute_dims,
broadcast_to, expand_dims, squeeze) between it and its readers, whatever form the importer gave them: the ops are
replayed on an array of the layer's element numbers.
"""

from __future__ import annotations

import numpy as np
from tvm import relax

from .patterns import static_shape

_LAYOUT_OPS = frozenset({"relax.reshape", "relax.permute_dims", "relax.broadcast_to", "relax.expand_dims",
                         "relax.squeeze"})
_MAX_ELEMENTS = 1 << 24  # index arrays replayed at most this large (a larger layer keeps the row split)


class Dataflow:
    """The bindings of one Relax function: each variable's value, its users, and the variable of each value."""

    def __init__(self, func: relax.Function, threads: int):
        self.threads = threads
        self._value: dict[relax.Var, relax.Expr] = {}
        self._users: dict[relax.Var, list[relax.Var]] = {}
        self._var_of: dict[relax.Expr, relax.Var] = {}
        for block in getattr(func.body, "blocks", []):
            for binding in block.bindings:
                if not isinstance(binding, relax.VarBinding):
                    continue
                self._value[binding.var] = binding.value
                self._var_of[binding.value] = binding.var
                for arg in _operands(binding.value):
                    self._users.setdefault(arg, []).append(binding.var)

    def read_by_columns(self, output: relax.Expr) -> bool:
        """Whether every reader of `output` (rows x features, any leading axes) is a batched matmul, and the
        threads would read more of what they wrote with the output split by columns than by rows."""
        var = output if isinstance(output, relax.Var) else self._var_of.get(output)
        shape = static_shape(output)
        if var is None or not _replayable(shape):
            return False
        rows, features = int(np.prod(shape[:-1])), shape[-1]
        readers = list(self._readers(var, np.arange(rows * features).reshape(shape)))
        return bool(readers) and all(
            _is_batched_matmul(call) and index is not None and self._columns_agree_more(index, rows, features)
            for call, index in readers)

    def _columns_agree_more(self, index: np.ndarray, rows: int, features: int) -> bool:
        """Whether a batched matmul reading the layer's rows x features as `index` (element numbers, row-major)
        computes each element on the thread that wrote it more often with the layer split by columns than by rows:
        contiguous ranges, one per thread, on both sides."""
        owners = _matmul_owners(index.shape, self.threads)
        by_rows = index // features // -(-rows // self.threads)
        by_columns = index % features // -(-features // self.threads)
        return bool(np.mean(by_columns == owners) > np.mean(by_rows == owners))

    def _readers(self, var: relax.Var, index: np.ndarray | None):
        """(call, index array of its operand, None if not static) for each non-layout reader of `var`, through
        layout ops."""
        for user in self._users.get(var, []):
            call = self._value[user]
            if _is_layout_op(call) and call.args[0].same_as(var):
                yield from self._readers(user, _replayed([call], index))
            else:
                yield call, index


def _matmul_owners(shape, threads: int) -> np.ndarray:
    """The thread that computes each element of a batched matmul's operand or output of `shape`: TVM runs the
    leading (batch) axes in parallel, in contiguous ranges of their flattened extent, one per thread."""
    batch = int(np.prod(shape[:-2]))
    owners = np.arange(batch) // -(-batch // threads)
    return np.broadcast_to(owners.reshape(tuple(shape[:-2]) + (1, 1)), shape)


def _replayable(shape) -> bool:
    return shape is not None and 0 < int(np.prod(shape)) <= _MAX_ELEMENTS


def _is_batched_matmul(call) -> bool:
    return (isinstance(call, relax.Call) and getattr(call.op, "name", None) == "relax.matmul"
            and all(len(static_shape(arg) or ()) >= 3 for arg in call.args))


def _is_layout_op(call) -> bool:
    return isinstance(call, relax.Call) and getattr(call.op, "name", None) in _LAYOUT_OPS


def _replayed(calls, index: np.ndarray | None) -> np.ndarray | None:
    """The layout ops `calls` applied in turn to an index array (None once one has a dynamic shape)."""
    for call in calls:
        if index is None:
            return None
        if call.op.name == "relax.permute_dims":
            axes = call.attrs.axes
            index = np.transpose(index, None if axes is None else [int(a) for a in axes])
            continue
        shape = static_shape(call)
        if shape is None:
            return None
        index = np.broadcast_to(index, shape) if call.op.name == "relax.broadcast_to" else index.reshape(shape)
    return index


def _operands(value: relax.Expr):
    """The variables a binding's value reads directly (tuple fields included)."""
    args = value.args if isinstance(value, relax.Call) else value.fields if isinstance(value, relax.Tuple) else []
    for arg in args:
        if isinstance(arg, relax.Tuple):
            yield from (field for field in arg.fields if isinstance(field, relax.Var))
        elif isinstance(arg, relax.Var):
            yield arg
