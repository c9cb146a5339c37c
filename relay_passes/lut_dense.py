"""`LUTDense`: replace dense and conv2d layers with LUT-NN product-quantization kernels (encode + lookup).

Matches every form of dense and conv2d layers the torch.export and ONNX importers produce
(`relay_passes.patterns.dense`, `relay_passes.patterns.conv2d`): batched inputs (B x T x D), the weight as a
constant (bind parameters first), with or without a bias add. Each layer's bundle entry is found by the weight's
fingerprint (`Bundle.find_pq`); the layer becomes two kernel calls with the entry's operands packed as constants:

    codes = call_tir(pq_encode, x, centroids)                            # nearest centroid per sub-vector
    y     = call_tir(pq_lookup, codes, int8 table, scale, bias)          # scale * sum of table rows + bias

A conv2d's encode reads its im2col rows from the NCHW input; its lookup writes (O, B*H'*W'), output channels by
pixels, which is NCHW for one image (a reshape) and needs only the (O, B) axes swapped for a batch (a dense layer's
(rows, O) would need a transpose of the whole activation). A dense layer with a few rows takes the few-row kernels
(`FEW_ROWS`). The kernels carry their own schedule (`tirx.is_scheduled`), tensorized with the target's lookup
intrinsic (`schedules.intrin`: AVX2 / AVX-512BW `vpshufb`, NEON `tbl`); a dense layer on a target with AVX-512
VBMI + VNNI and M % 16 == 0 takes the `vpermb` + `vpdpbusd` lookup (`schedules.kernels.pq_lookup_dot`) instead.

A dense layer whose output feeds an elementwise table kernel (NN-LUT's GELU, already rewritten by `LUTNonlinear`,
directly or through a reshape) takes it into that lookup's epilogue when the layer gets the `vpermb` lookup:

    y     = call_tir(pq_lookup_dot + table, codes, int8 table, scale, bias)   # table(scale * sum + bias)

bit for bit the two kernels, without writing the layer's output and reading it back. Elsewhere the table kernel
stays a call of its own. On several cores, a lookup whose output attention reads by heads (the Q, K and V
projections at one sequence) splits its outputs between the threads instead of its rows (`thread_split`).

Precondition: high-level Relax ops, as imported; the pass sits before LegalizeOps (phase 1 of the `tvm_lut`
pipeline), like `LUTNonlinear`. Served: float32, static shapes, K <= 16, a target with a lookup intrinsic. A layer
without an entry, or one that cannot be served, stays exact; the `PassReport` the run attaches to the module
(`PassReport.of(mod, "LUTDense")`) says why.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import tvm
from tvm import relax
from tvm.relax.dpl import GlobalVarPattern, TuplePattern, is_op, wildcard

from .lut_rewriter import LUTRewriter
from .patterns import Form, static_shape
from .patterns import conv2d as conv2d_patterns
from .patterns import dense as dense_patterns
from .patterns.conv2d import ConvMatch
from .patterns.dense import DenseMatch
from .report import PassReport, UnusedEntry
from .thread_split import Dataflow

logger = logging.getLogger(__name__)

# A dense layer of at most lanes / FEW_ROWS rows (4 of 32 lanes) takes `schedules.kernels.pq_rows`: the lane
# kernels would compute all 32 rows (the CNN's fc1 at one row: 13.7 us, the few-row kernels 2.2 us).
FEW_ROWS = 8

_SERVED_DTYPE = "float32"
# The reason an entry matched no layer at all (its tables were learned for other weights).
NO_MATCHING_WEIGHT = "its weight fingerprint matches no dense/conv weight of the module"


@tvm.ir.transform.module_pass(opt_level=0, name="LUTDense")
class LUTDense:
    """Rewrite the dense / conv2d layers that have a `pq` entry in `bundle` to PQ kernels (see the module docstring).

    `target`: the target the kernels are built for (its lookup intrinsic and lane count); default: the target in
    scope (`with target:`, as the `tvm_lut` pipeline runs it). With neither the pass fails: the host's instruction
    would be a guess about the device. `prefer_avx512`: use 64-row AVX-512BW lookups.
    """

    def __init__(self, bundle, target: tvm.target.Target | None = None, prefer_avx512: bool = False):
        from tvm_lut.bundle import Bundle

        if not isinstance(bundle, Bundle):
            raise TypeError(f"LUTDense needs a tvm_lut.Bundle with pq entries, got {type(bundle).__name__}")
        if target is not None and not isinstance(target, tvm.target.Target):
            raise TypeError(f"target must be a tvm.target.Target, got {type(target).__name__}")
        self.bundle = bundle
        self.target = target
        self.prefer_avx512 = prefer_avx512
        self.forms = _activated_forms(dense_patterns.forms()) + dense_patterns.forms() + conv2d_patterns.forms()

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        from schedules.intrin import lookup_intrin

        target = self.target or tvm.target.Target.current(allow_none=True)
        if target is None:
            raise ValueError("LUTDense needs the target its kernels are for: LUTDense(bundle, target=...), or run it "
                             "inside `with target:` (schedules.target.resolve_target('host') for this CPU)")
        rewriter = _DenseRewriter(mod, self.bundle, target, lookup_intrin(target, self.prefer_avx512))
        mod = rewriter.run(mod, self.forms)
        used = {entry.entry for entry in rewriter.report.replaced}
        rewriter.report.unused += [UnusedEntry(name, _unused_reason(name, rewriter.report))
                                   for name, table in self.bundle.items() if table.kind == "pq" and name not in used]
        rewriter.report.log(logger)
        return rewriter.report.attach(mod)


class _DenseRewriter(LUTRewriter):
    """Serves the matches of one pass run; the kernels are built once per (entry, row count, input source)."""

    def __init__(self, mod, bundle, target, intrin):
        super().__init__(mod, "LUTDense")
        self.bundle, self.target, self.intrin = bundle, target, intrin
        self._kernels: dict[tuple, tuple[relax.GlobalVar, relax.GlobalVar]] = {}
        self._dataflow: tuple[relax.Function, Dataflow] | None = None  # of the function being rewritten

    def serve(self, form, matched, matchings):
        if isinstance(form, _ActivatedForm):
            return self._serve_activated(form, matched, matchings)
        checked = self._check(form, matched, matchings)
        if not isinstance(checked, tuple):
            return checked
        match, name, table = checked
        x_shape, out_shape = static_shape(match.x), static_shape(matched)
        if isinstance(match, ConvMatch):
            from schedules.kernels.pq_encode import Im2col

            source = Im2col(x_shape, table.kernel_size, match.stride, match.padding, match.dilation)
            y, kernel = self._call(name, table, match.x, source.rows, match.bias, source)
            batch, out_channels, out_h, out_w = out_shape
            if batch == 1:
                return relax.op.reshape(y, out_shape), kernel, name
            by_channel = relax.op.reshape(y, (out_channels, batch, out_h, out_w))
            return relax.op.permute_dims(by_channel, [1, 0, 2, 3]), kernel, name
        rows = int(np.prod(x_shape[:-1]))
        x2d = match.x if len(x_shape) == 2 else relax.op.reshape(match.x, (rows, table.D))
        y, kernel = self._call(name, table, x2d, rows, match.bias, source=None,
                               split_outputs=self._split_outputs(matched))
        return (y if len(x_shape) == 2 else relax.op.reshape(y, out_shape)), kernel, name

    def _split_outputs(self, output) -> bool:
        """Whether the lookup computing `output` should split its outputs between threads, not its rows: on a
        target of several cores, where attention reads it by heads (`thread_split`)."""
        from schedules.target import num_cores

        threads = num_cores(self.target)
        if threads < 2:
            return False
        if self._dataflow is None or self._dataflow[0] is not self.function:
            self._dataflow = (self.function, Dataflow(self.function, threads))
        return self._dataflow[1].read_by_columns(output)

    def _serve_activated(self, form, matched, matchings):
        """The dense layer and its table kernel as one lookup, or None (the plain forms then serve the layer)."""
        from schedules.kernels.pwl import elementwise_table

        checked = self._check(form.dense, matchings[form.dense.pattern], matchings)
        activation_gv = matchings[form.activation]
        activation = elementwise_table(self.builder.get()[activation_gv])
        if not isinstance(checked, tuple) or activation is None or activation.scaling != "none":
            return None
        match, name, table = checked
        x_shape = static_shape(match.x)
        rows = int(np.prod(x_shape[:-1]))
        if (static_shape(matched) is None or int(np.prod(static_shape(matched))) != rows * table.M
                or not self._takes_dot_lookup(rows, table)):
            return None
        x2d = match.x if len(x_shape) == 2 else relax.op.reshape(match.x, (rows, table.D))
        y, kernel = self._call(name, table, x2d, rows, match.bias, source=None,
                               activation=(activation_gv.name_hint, activation))
        return relax.op.reshape(y, static_shape(matched)), kernel, name

    def _few_rows(self, rows: int, source) -> bool:
        return source is None and rows <= self.intrin.lanes // FEW_ROWS

    def _takes_dot_lookup(self, rows: int, table, source=None) -> bool:
        from schedules.kernels.pq_lookup_dot import dot_lookup_supported

        return source is None and not self._few_rows(rows, source) and dot_lookup_supported(self.target, table.M)

    def _check(self, form, matched, matchings):
        """(match, entry name, table) when the layer can be served, a reason when not, None when not the op."""
        match = form.extract(matchings)
        if match is None or isinstance(match, str):
            return match
        if str(getattr(matched.ty, "dtype", "")) != _SERVED_DTYPE or str(match.x.ty.dtype) != _SERVED_DTYPE:
            return f"dtype {matched.ty.dtype}: the PQ kernels compute in {_SERVED_DTYPE}"
        if static_shape(matched) is None or static_shape(match.x) is None:
            return "dynamic shape: the PQ kernels need static shapes"
        found = self.bundle.find_pq(match.weight)
        if found is None or found.layout != "torch":
            return _fingerprint_miss(self.bundle, match.weight)
        name, table = found
        if self.intrin is None:
            return (f"entry {name!r}: target {self.target.attrs.get('mcpu', self.target.kind.name)} has no lookup "
                    "intrinsic (needs x86 AVX2, AVX-512BW or ARM NEON)")
        if table.K > 16:
            return f"entry {name!r}: K = {table.K}; the lookup kernels serve K <= 16 (one shuffle register)"
        if isinstance(match, ConvMatch):
            reason = _conv_mismatch(table, match)
            if reason:
                return f"entry {name!r}: {reason}"
        elif table.layer != "linear":
            return f"entry {name!r} is a {table.layer} table, the graph has a dense layer"
        return match, name, table

    def _call(self, name, table, x, rows, bias, source, activation=None, split_outputs=False):
        """encode + lookup calls on `x`: the output, (rows, M) for a dense layer and (M, rows) for a conv (`source`),
        and the lookup kernel's name. A dense layer with a few rows takes the few-row kernels (`FEW_ROWS`).
        `activation`: (name, table) applied in the `vpermb` lookup's epilogue (only where it is taken).
        `split_outputs`: the lookup's threads split its outputs, not its rows (`_split_outputs`)."""
        from schedules.kernels.pq_encode import pack_centroids, pq_encode_func
        from schedules.kernels.pq_lookup import LookupLayout, pack_table, pq_lookup_func
        from schedules.kernels.pq_lookup_dot import DotLookupLayout, encode_lanes, pack_table_dot, pq_lookup_dot_func
        from schedules.kernels.pq_rows import pack_centroids_by_dim, pq_encode_rows_func, pq_lookup_rows_func
        from schedules.target import num_cores

        few_rows = self._few_rows(rows, source)
        dot = self._takes_dot_lookup(rows, table, source)
        activation_name, activation_table = activation or ("", None)
        if dot:
            layout = DotLookupLayout(rows, table.C, table.K, table.M, encode_lanes(rows, num_cores(self.target)))
        else:
            layout = LookupLayout(rows, table.C, table.K, table.M, self.intrin.lanes)
        key = (name, rows, source, activation_name, split_outputs)
        if key not in self._kernels:
            if few_rows:
                encode = pq_encode_rows_func(rows, table.C, table.K, table.V)
                lookup = pq_lookup_rows_func(rows, table.C, table.K, table.M)
            else:
                encode = pq_encode_func(layout, table.V, source, threads=num_cores(self.target))
                lookup = (pq_lookup_dot_func(layout, activation_table, num_cores(self.target), split_outputs) if dot
                          else pq_lookup_func(layout, self.intrin, columns=source is not None,
                                              split_outputs=split_outputs))
            suffix = f"_{activation_name}" if activation_name else ""
            self._kernels[key] = (self.builder.add_func(encode.without_attr("global_symbol"), f"pq_encode_{name}"),
                                  self.builder.add_func(lookup.without_attr("global_symbol"),
                                                        f"pq_lookup_{name}{suffix}"))
        encode_gv, lookup_gv = self._kernels[key]
        bias = np.zeros(table.M, np.float32) if bias is None else bias
        if few_rows:
            centroids, codes_ty, lookup_table = (pack_centroids_by_dim(table.centroids),
                                                 relax.TensorType((rows, table.C), "int32"), table.table)
        else:
            centroids, codes_ty, lookup_table = (pack_centroids(table.centroids, layout),
                                                 relax.TensorType(layout.codes_shape, "uint8"),
                                                 (pack_table_dot if dot else pack_table)(table.table, layout))
        codes = relax.call_tir(encode_gv, [x, relax.const(centroids)], codes_ty)
        y_shape = (table.M, rows) if source is not None else (rows, table.M)
        y = relax.call_tir(lookup_gv, [codes, relax.const(lookup_table), relax.const(table.scale), relax.const(bias)],
                           relax.TensorType(y_shape, "float32"))
        return y, lookup_gv.name_hint


@dataclasses.dataclass(frozen=True)
class _ActivatedForm:
    """A dense form (`dense`) whose output an elementwise table kernel reads (`activation`: its GlobalVar)."""

    op: str
    name: str
    pattern: object
    dense: Form
    activation: GlobalVarPattern


def _activated_forms(dense_forms: list[Form]) -> list[_ActivatedForm]:
    forms = []
    for dense in dense_forms:
        for through_reshape in (False, True):
            activation = GlobalVarPattern()
            inner = is_op("relax.reshape")(dense.pattern, wildcard()) if through_reshape else dense.pattern
            forms.append(_ActivatedForm(
                "dense", f"{dense.name}, then a table kernel{' through a reshape' if through_reshape else ''}",
                is_op("relax.call_tir")(activation, TuplePattern([inner])), dense, activation))
    return forms


def _conv_mismatch(table, match: ConvMatch) -> str | None:
    """Why the conv in the graph is not the one the entry was trained for, or None."""
    if table.layer != "conv2d":
        return f"a {table.layer} table, the graph has a conv2d"
    top, left, bottom, right = match.padding
    if (top, left) != (bottom, right) or (top, left) != tuple(table.padding):
        return f"padding {match.padding} in the graph, {table.padding} in the entry"
    if match.stride != tuple(table.stride) or match.dilation != tuple(table.dilation):
        return (f"stride/dilation {match.stride}/{match.dilation} in the graph, "
                f"{table.stride}/{table.dilation} in the entry")
    return None


def _short(fingerprint: dict) -> str:
    return fingerprint["sha256"][:12]


def _fingerprint_miss(bundle, weight: np.ndarray) -> str:
    """Why no entry serves `weight` (torch layout): no entry of its shape, or entries of its shape learned for other
    values (the bundle belongs to other weights: another model, or weights trained after the tables were taken)."""
    from tvm_lut.bundle import fingerprint

    shape = list(weight.shape)
    same_shape = [name for name, entry in bundle.items()
                  if entry.kind == "pq" and int(np.prod(entry.weight_fingerprint["shape"])) == weight.size
                  and (entry.weight_fingerprint["shape"] == shape or entry.layer == "conv2d")]
    if not same_shape:
        return f"no pq entry in the bundle for a weight of shape {tuple(shape)}"
    names = ", ".join(repr(n) for n in same_shape[:3]) + (" ..." if len(same_shape) > 3 else "")
    return (f"fingerprint mismatch: the weight {tuple(shape)} (sha256 {_short(fingerprint(weight))}) is not the one "
            f"the entries of its shape ({names}) were learned for: the bundle belongs to other weights")


def _unused_reason(name: str, report: PassReport) -> str:
    """Why entry `name` served no layer: its fingerprint matched a layer that could not be served, or none."""
    for kept in report.kept:
        if f"entry {name!r}" in kept.reason:
            return kept.reason
    return f"{NO_MATCHING_WEIGHT} (learned for another model's weights)"
