"""Per-function time of a Relax VM executable: which kernels a model's latency goes to.

TVM 0.27's VM has no profiler, only an instrument hook called around each `call` instruction of bytecode (an
executable built with `exec_mode="bytecode"`; compiled VM code calls kernels directly). One instrumented run records
every call and its arguments; each distinct function is then timed alone on those arguments (median of `repeat`, so
the hook's Python overhead is not in the figure), and the rest of the model's latency is the `vm overhead` row: VM
dispatch, allocation, builtins, and the cache misses of a kernel whose data a whole model run evicts (a kernel
timed alone runs warm). A stand-in for `tvm-lut profile`.
"""

from collections import Counter

from .timing import median_seconds


def profile_vm(bytecode, inputs: list, executable=None, repeat: int = 5) -> list[dict]:
    """Rows `{function, calls, ms, share}` for `main(*inputs)` (TVM tensors), slowest first; `ms` sums the calls.

    bytecode: the model built with `exec_mode="bytecode"`; executable: the same model as it is deployed (default:
    `bytecode`), whose latency the shares are of.
    """
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(bytecode, tvm.cpu())
    recorded: list[tuple[str, object, tuple]] = []

    def instrument(func, symbol, before_run, ret_value, *args):
        if before_run and not symbol.startswith("vm.builtin."):
            recorded.append((symbol, func, args))
        return 0  # VMInstrumentReturnKind.NO_OP

    vm.set_instrument(tvm.runtime.convert(instrument))
    vm["main"](*inputs)
    vm.set_instrument(None)
    if not recorded:
        raise ValueError("no kernel call seen: profile an executable built with exec_mode=\"bytecode\" "
                         "(compiled VM code calls kernels without the instrument hook)")
    calls = Counter(symbol for symbol, _, _ in recorded)
    first = {symbol: (func, args) for symbol, func, args in reversed(recorded)}
    per_call = {symbol: median_seconds(lambda f=func, a=args: f(*a), repeat) for symbol, (func, args) in first.items()}
    main = relax.VirtualMachine(executable or bytecode, tvm.cpu())["main"]
    total_ms = 1e3 * median_seconds(lambda: main(*inputs), repeat)
    rows = [{"function": symbol, "calls": n, "ms": 1e3 * per_call[symbol] * n} for symbol, n in calls.items()]
    rows.append({"function": "vm overhead", "calls": None, "ms": max(0.0, total_ms - sum(r["ms"] for r in rows))})
    for row in rows:
        row["share"] = row["ms"] / total_ms
    return sorted(rows, key=lambda r: -r["ms"])
