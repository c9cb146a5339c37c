"""`FuseLayoutIntoMatmul`: the reshapes and transposes around a matmul (attention's heads) grouped with it.

Attention splits Q, K and V into heads (`reshape`, `permute_dims`; torch.export adds `broadcast_to` and a reshape to
3-D), multiplies, and merges the heads back. FuseOps gives each such chain a function of its own (a copy of the
tensor in the new layout: 24 calls per MiniLM inference), as it fuses no producer into a matmul and only
elementwise consumers. Grouped with the matmul here (FuseOpsByPattern; FuseTIR then makes one PrimFunc, as for any
fused function), the Matmul rule inlines the producers into its operand reads and the consumers into its tiles'
stores: the same products summed in the same order, without the copies.

Grouped, for a product of two computed tensors (a constant operand is a dense layer's weight: its layout folds at
compile time and FuseOps gives it its bias and activation): chains of single-use `reshape` / `permute_dims` / `broadcast_to` ops into the left operand (the rule
broadcasts its elements one by one: any layout), into the right operand and after the matmul only while they keep
its last axis contiguous (the rule loads B and stores C in vectors along it): a permutation that keeps the last
axis last, a reshape that splits the last axis (right operand) or merges others into it (output), a broadcast
that leaves it alone. Runs before LegalizeOps; not a LUT pass (the exact model gains as much).

Report: its `PassReport` ("FuseLayoutIntoMatmul") lists each group as replaced: op "matmul", the form names the
ops grouped on each side.
"""

from __future__ import annotations

import logging

import tvm
from tvm import relax
from tvm.relax.dpl import is_op, wildcard

from .patterns import static_shape
from .report import PassReport, Replaced

logger = logging.getLogger(__name__)

_LAYOUT_OPS = ("relax.reshape", "relax.permute_dims", "relax.broadcast_to")
_PATTERN_NAME = "matmul_layout"


@tvm.transform.module_pass(opt_level=0, name="FuseLayoutIntoMatmul")
class FuseLayoutIntoMatmul:
    """Group each matmul with the layout ops around it (see the module docstring)."""

    def transform_module(self, mod: tvm.IRModule, _ctx) -> tvm.IRModule:
        report = PassReport("FuseLayoutIntoMatmul")
        found = {}  # chain shape -> the matmuls that have it
        for _, func in mod.functions_items():
            if isinstance(func, relax.Function) and not int((func.attrs or {}).get("Primitive", 0)):
                for shape, matmul in _chains(func):
                    found.setdefault(shape, []).append(matmul)
        if not found:
            return report.attach(mod)
        matmuls = [matmul for group in found.values() for matmul in group]

        def check(context) -> bool:
            return any(m.same_as(context.annotated_expr["matmul"]) for m in matmuls) and _check(context)

        patterns = [relax.transform.FusionPattern(_PATTERN_NAME, *_pattern(*shape), check=check)
                    for shape in sorted(found, key=lambda s: -sum(map(len, s)))]
        fused = relax.transform.FuseOpsByPattern(patterns, bind_constants=False, annotate_codegen=False)(mod)
        groups = {gvar: func for gvar, func in fused.functions_items()
                  if isinstance(func, relax.Function) and str((func.attrs or {}).get("Composite", "")) == _PATTERN_NAME}
        for gvar in _calls(fused, groups):  # one entry per group, as the LUT passes report each op
            func = groups[gvar]
            report.replaced.append(Replaced("matmul", _form(func), static_shape(func.body.body), str(func.ret_ty.dtype),
                                            gvar.name_hint))
        report.log(logger)
        return report.attach(fused)


def _chains(func: relax.Function) -> list[tuple[tuple, relax.Call]]:
    """((left, right, output) op chains, innermost first, the matmul) for each matmul of `func` with something to
    group."""
    values, users = {}, {}
    for block in func.body.blocks:
        for binding in block.bindings:
            values[binding.var] = binding.value
            for arg in getattr(binding.value, "args", ()):
                if isinstance(arg, relax.Var):
                    users.setdefault(arg, []).append(binding.var)
    chains = []
    for var, value in values.items():
        if not _is_call(value, "relax.matmul"):
            continue
        left = _producers(value.args[0], values, users, lambda call: True)
        right = _producers(value.args[1], values, users, _keeps_right_contiguous)
        if any(isinstance(_source(arg, values), tvm.ir.Constant) for arg in value.args):
            continue  # a dense layer: its weight's layout folds at compile time, its epilogue fuses as it is
        output = []
        while len(users.get(var, ())) == 1 and _keeps_output_contiguous(values.get(users[var][0])):
            var = users[var][0]
            output.append(values[var].op.name)
        if left or right or output:
            chains.append(((tuple(left), tuple(right), tuple(output)), value))
    return chains


def _producers(arg, values, users, allowed) -> list[str]:
    """The layout ops producing `arg`, innermost first, while each is single-use and `allowed`."""
    chain = []
    while isinstance(arg, relax.Var) and len(users.get(arg, ())) == 1:
        value = values.get(arg)
        if not (value is not None and any(_is_call(value, op) for op in _LAYOUT_OPS) and allowed(value)):
            break
        chain.append(value.op.name)
        arg = value.args[0]
    return chain[::-1]


def _source(arg, values):
    """What `arg` is a layout of (itself when it is not the result of a layout op)."""
    while isinstance(arg, relax.Var) and any(_is_call(values.get(arg), op) for op in _LAYOUT_OPS):
        arg = values[arg].args[0]
    return arg


def _is_call(value, op: str) -> bool:
    return isinstance(value, relax.Call) and isinstance(value.op, tvm.ir.Op) and value.op.name == op


def _last_dims(call) -> tuple[int, int] | None:
    """(input's, output's) last dimension of a layout op, None when either is not static."""
    source, result = static_shape(call.args[0]), static_shape(call)
    if not source or not result:
        return None
    return source[-1], result[-1]


def _keeps_last_axis(call) -> bool:
    if _is_call(call, "relax.permute_dims"):
        axes, ndim = call.attrs.axes, call.args[0].ty.ndim
        return axes is not None and int(axes[-1]) in (ndim - 1, -1)
    if _is_call(call, "relax.broadcast_to"):
        dims = _last_dims(call)
        return dims is not None and dims[0] == dims[1]
    return _is_call(call, "relax.reshape")


def _keeps_right_contiguous(call) -> bool:
    """A right-operand op after which the last axis still runs along memory: a reshape only splits it."""
    dims = _last_dims(call)
    return _keeps_last_axis(call) and dims is not None and (not _is_call(call, "relax.reshape")
                                                            or dims[0] % dims[1] == 0)


def _keeps_output_contiguous(call) -> bool:
    """An output op after which the matmul's columns still run along memory: a reshape only merges into them."""
    if call is None or not any(_is_call(call, op) for op in _LAYOUT_OPS):
        return False
    dims = _last_dims(call)
    return _keeps_last_axis(call) and dims is not None and (not _is_call(call, "relax.reshape")
                                                            or dims[1] % dims[0] == 0)


def _layout(op: str, inner):
    return is_op(op)(inner) if op == "relax.permute_dims" else is_op(op)(inner, wildcard())


def _chain(inner, ops):
    for op in ops:
        inner = _layout(op, inner)
    return inner


def _pattern(left, right, output):
    matmul = is_op("relax.matmul")(_chain(wildcard(), left), _chain(wildcard(), right))
    return _chain(matmul, output), {"matmul": matmul}


def _check(context) -> bool:
    """A matched group keeps what `_chains` allowed: every op single-use, the right operand and output contiguous."""
    matmul = context.annotated_expr["matmul"]
    bound = context.matched_bindings
    root = next((var for var, value in bound.items() if value.same_as(context.matched_expr)), None)
    if any(len(context.var_usages.get(var, ())) != 1 for var in bound if not var.same_as(root)):
        return False
    arg = matmul.args[1]
    while isinstance(arg, relax.Var) and arg in bound:
        if not _keeps_right_contiguous(bound[arg]):
            return False
        arg = bound[arg].args[0]
    var = root
    while var is not None and var in bound and not bound[var].same_as(matmul):
        if not _keeps_output_contiguous(bound[var]):
            return False
        var = bound[var].args[0] if isinstance(bound[var].args[0], relax.Var) else None
    return True


def _calls(mod: tvm.IRModule, functions: dict) -> list:
    """The GlobalVars of `functions` called by the module's other Relax functions, once per call, in order."""
    calls = []
    for gvar, func in mod.functions_items():
        if isinstance(func, relax.Function) and gvar not in functions:
            for block in func.body.blocks:
                calls += [b.value.op for b in block.bindings
                          if isinstance(b.value, relax.Call) and b.value.op in functions]
    return calls


def _form(func: relax.Function) -> str:
    """'left ops -> matmul(.., right ops) -> output ops' of a grouped function."""
    ops = [binding.value.op.name.removeprefix("relax.") for block in func.body.blocks for binding in block.bindings
           if isinstance(binding.value, relax.Call) and isinstance(binding.value.op, tvm.ir.Op)]
    return " ".join(ops)


__all__ = ["FuseLayoutIntoMatmul"]
