"""`PQTable`: one LUT-NN layer as the compiler sees it (the `pq` bundle entry kind).

A dense or conv layer `y = x @ W.T + b` becomes product quantization: the input row (length D; for a conv the
im2col patch in the weight's `(I, kh, kw)` order) is cut into C = D / V sub-vectors, each replaced by the index
of its nearest centroid, and the output is a sum of precomputed int8 table rows:

    code_c = argmin_k ||x_c - centroids[c, k]||^2          (ties -> lowest k)
    y      = scale * sum_c int32(table[c, code_c, :]) + bias            (scale, bias: one per output)

`tvm_lut.pq.reference` evaluates exactly this in PyTorch; the compiled kernels are tested against it.
`scale` (M,) is chosen per output column (see `tvm_lut.pq.quantize`) so that int16 partial sums over blocks of up to `INT16_BLOCK`
codebooks and the int32 total cannot overflow, whatever the input: entries lie in [-127, 127] (-128 is
rejected) and 256 * 127 < 32767.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np

from tvm_lut.bundle import BundleError, fingerprint, register_kind
from tvm_lut.pq.quantize import quantize_table

LAYERS = ("linear", "conv2d")
# The memory layouts of the tensors; recorded in the manifest so a layout change fails loudly.
LAYOUT = "centroids:CKV,table:CKM,scale:M"
# Files of tvm-lut before per-column scales: one scale in the manifest; their tables are not re-quantized here.
PER_TENSOR_LAYOUT = "centroids:CKV,table:CKM"


class PQTableError(ValueError):
    """An inconsistent PQ table (wrong shape, dtype, or an overflow-unsafe scale); `field` names the culprit."""

    def __init__(self, message: str, field: str | None = None):
        super().__init__(message)
        self.field = field


def _pair(value, name: str) -> tuple[int, int]:
    pair = tuple(int(v) for v in value)
    if len(pair) != 2:
        raise PQTableError(f"{name} must have two entries, got {value!r}", name)
    return pair


@register_kind
@dataclass(frozen=True, eq=False)
class PQTable:
    """A learned PQ layer: centroids (C, K, V) float32, table (C, K, M) int8, `scale` (M,) float32, bias (M,).

    For `layer == "conv2d"` the conv geometry is kept (`kernel_size`, `stride`, `padding`, `dilation`,
    `in_channels`); `in_features == in_channels * kh * kw`. Groups are not supported (they stay exact).
    `weight_fingerprint` is `tvm_lut.fingerprint` of the fp32 weight this table replaces.
    """

    kind: ClassVar[str] = "pq"

    centroids: np.ndarray
    table: np.ndarray
    scale: np.ndarray
    bias: np.ndarray | None
    weight_fingerprint: dict
    layer: str = "linear"
    kernel_size: tuple[int, int] | None = None
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] | None = None
    dilation: tuple[int, int] | None = None
    in_channels: int | None = None
    layout: str = field(default=LAYOUT)

    def __post_init__(self):
        set_ = object.__setattr__
        set_(self, "centroids", np.ascontiguousarray(self.centroids, dtype=np.float32))
        if not isinstance(self.table, np.ndarray) or self.table.dtype != np.int8:
            raise PQTableError(f"table must be an int8 array, got {getattr(self.table, 'dtype', type(self.table))}", "table")
        set_(self, "table", np.ascontiguousarray(self.table))
        if self.centroids.ndim != 3:
            raise PQTableError(f"centroids must be (C, K, V), got shape {self.centroids.shape}", "centroids")
        if self.table.ndim != 3 or self.table.shape[:2] != self.centroids.shape[:2]:
            raise PQTableError(
                f"table must be (C, K, M) with (C, K) = {self.centroids.shape[:2]}, got {self.table.shape}", "table")
        if self.table.min(initial=0) < -127:
            raise PQTableError("table holds -128; entries must lie in [-127, 127] (symmetric int8)", "table")
        if not np.isfinite(self.centroids).all():
            raise PQTableError("centroids contain NaN or inf", "centroids")
        try:
            scale = np.ascontiguousarray(self.scale, dtype=np.float32)
        except (TypeError, ValueError):
            raise PQTableError(f"scale must be a float32 array ({self.M},), got {self.scale!r}", "scale") from None
        if scale.shape != (self.M,):
            raise PQTableError(f"scale must have shape ({self.M},) (one per output), got {scale.shape}", "scale")
        if not (np.isfinite(scale).all() and (scale > 0).all()):
            raise PQTableError("scale must be positive and finite in every output", "scale")
        set_(self, "scale", scale)
        if self.bias is not None:
            set_(self, "bias", np.ascontiguousarray(self.bias, dtype=np.float32))
            if self.bias.shape != (self.M,):
                raise PQTableError(f"bias must have shape ({self.M},), got {self.bias.shape}", "bias")
        if self.layout != LAYOUT:
            raise PQTableError(f"layout {self.layout!r} is not the supported {LAYOUT!r}", "layout")
        fp = self.weight_fingerprint
        if not (isinstance(fp, dict) and "shape" in fp and "sha256" in fp):
            raise PQTableError(f"weight_fingerprint must be a dict with 'shape' and 'sha256', got {fp!r}", "weight_fingerprint")
        self._check_layer()

    def _check_layer(self):
        set_ = object.__setattr__
        shape = tuple(self.weight_fingerprint["shape"])
        if self.layer == "linear":
            if shape != (self.M, self.D):
                raise PQTableError(f"linear weight fingerprint shape {shape} != (M, D) = {(self.M, self.D)}", "weight_fingerprint")
            return
        if self.layer != "conv2d":
            raise PQTableError(f"layer must be one of {LAYERS}, got {self.layer!r}", "layer")
        for name in ("kernel_size", "stride", "padding", "dilation"):
            if getattr(self, name) is None:
                raise PQTableError(f"a conv2d table needs {name}", name)
            set_(self, name, _pair(getattr(self, name), name))
        if self.in_channels is None:
            raise PQTableError("a conv2d table needs in_channels", "in_channels")
        set_(self, "in_channels", int(self.in_channels))
        kh, kw = self.kernel_size
        if self.in_channels * kh * kw != self.D:
            raise PQTableError(f"in_channels * kh * kw = {self.in_channels * kh * kw} != D = {self.D}", "in_channels")
        if shape != (self.M, self.in_channels, kh, kw):
            raise PQTableError(f"conv weight fingerprint shape {shape} != {(self.M, self.in_channels, kh, kw)}", "weight_fingerprint")

    @classmethod
    def from_weight(cls, centroids: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
                    **conv_geometry) -> "PQTable":
        """The table for `weight` (torch layout, (M, D) or (O, I, kh, kw)) and centroids (C, K, V):
        `T[c, k, :] = W[:, c*V:(c+1)*V] @ centroids[c, k]`, quantized by `quantize_table`. Pass `kernel_size`,
        `stride`, `padding`, `dilation` for a conv (its `in_channels` is read from the weight)."""
        weight = np.asarray(weight, dtype=np.float32)
        centroids = np.asarray(centroids, dtype=np.float32)
        num_codebooks, _, sub_len = centroids.shape
        flat = weight.reshape(weight.shape[0], -1)
        if flat.shape[1] != num_codebooks * sub_len:
            raise PQTableError(f"weight {weight.shape} has {flat.shape[1]} inputs, centroids cover "
                               f"C * V = {num_codebooks * sub_len}", "centroids")
        slices = flat.reshape(flat.shape[0], num_codebooks, sub_len)
        table, scale = quantize_table(np.einsum("ckv,mcv->ckm", centroids, slices))
        if weight.ndim == 4:
            conv_geometry = {"layer": "conv2d", "in_channels": weight.shape[1], **conv_geometry}
        return cls(centroids=centroids, table=table, scale=scale, bias=bias,
                   weight_fingerprint=fingerprint(weight), **conv_geometry)

    # -- sizes ---------------------------------------------------------------------------------------------
    @property
    def C(self) -> int:
        return self.centroids.shape[0]

    @property
    def K(self) -> int:
        return self.centroids.shape[1]

    @property
    def V(self) -> int:
        return self.centroids.shape[2]

    @property
    def D(self) -> int:
        """in_features: the length of one input row (C * V)."""
        return self.C * self.V

    @property
    def M(self) -> int:
        """out_features."""
        return self.table.shape[2]

    in_features = D
    out_features = M

    @property
    def nbytes(self) -> int:
        """Bytes the compiled layer keeps: int8 table + fp32 centroids + fp32 bias."""
        bias = 0 if self.bias is None else self.bias.nbytes
        return self.table.nbytes + self.centroids.nbytes + bias

    def dequantized(self) -> np.ndarray:
        """The table as float32 (C, K, M): `table * scale` (scale per output)."""
        return self.table.astype(np.float32) * self.scale

    # -- bundle record -------------------------------------------------------------------------------------
    def to_record(self) -> tuple[dict, dict]:
        meta = {
            "layer": self.layer,
            "layout": self.layout,
            "K": self.K,
            "V": self.V,
            "C": self.C,
            "in_features": self.D,
            "out_features": self.M,
            "has_bias": self.bias is not None,
            "weight_fingerprint": dict(self.weight_fingerprint),
        }
        if self.layer == "conv2d":
            meta.update({name: list(getattr(self, name)) for name in ("kernel_size", "stride", "padding", "dilation")})
            meta["in_channels"] = self.in_channels
        tensors = {"centroids": self.centroids, "table": self.table, "scale": self.scale}
        if self.bias is not None:
            tensors["bias"] = self.bias
        return meta, tensors

    @classmethod
    def from_record(cls, name: str, meta: dict, tensors: dict) -> "PQTable":
        """Rebuild and validate an entry; any inconsistency raises `BundleError` naming the entry and field."""
        if meta.get("layout") == PER_TENSOR_LAYOUT:
            raise BundleError("was written by an older tvm-lut with one per-tensor scale; the kernels now read one "
                              "scale per output: learn the tables again (tvm-lut learn)", entry=name, field="layout")
        sizes = {key: meta.get(key) for key in ("C", "K", "V", "out_features")}
        expected = {"centroids": ((sizes["C"], sizes["K"], sizes["V"]), np.float32),
                    "table": ((sizes["C"], sizes["K"], sizes["out_features"]), np.int8),
                    "scale": ((sizes["out_features"],), np.float32)}
        if meta.get("has_bias"):
            expected["bias"] = ((sizes["out_features"],), np.float32)
        for field_name, (shape, dtype) in expected.items():
            if field_name not in tensors:
                raise BundleError("tensor missing", entry=name, field=field_name)
            tensor = np.asarray(tensors[field_name])
            if tensor.shape != shape or tensor.dtype != dtype:
                raise BundleError(f"is {tensor.dtype}{list(tensor.shape)}, but C, K, V, out_features in the "
                                  f"manifest say {np.dtype(dtype)}{list(shape)}", entry=name, field=field_name)
        if meta.get("in_features") != sizes["C"] * sizes["V"]:
            raise BundleError(f"{meta.get('in_features')} != C * V", entry=name, field="in_features")
        conv = {key: meta.get(key) for key in ("kernel_size", "stride", "padding", "dilation", "in_channels")}
        try:
            return cls(centroids=tensors["centroids"], table=np.asarray(tensors["table"]), scale=tensors["scale"],
                       bias=tensors.get("bias") if meta.get("has_bias") else None,
                       weight_fingerprint=meta.get("weight_fingerprint"), layer=meta.get("layer"),
                       layout=meta.get("layout"), **conv)
        except PQTableError as err:
            raise BundleError(str(err), entry=name, field=err.field) from None
