"""LUT-NN (arXiv 2302.03213) training stage: dense and conv layers as product quantization with learned centroids.

The flow is torchao's prepare -> train -> convert: `quantize_(model, PQConfig(...))` swaps `nn.Linear` / `nn.Conv2d`
for PQ layers (`swap`), `init_centroids` runs per-codebook k-means on real activations (`kmeans`), `train_centroids`
learns centroids and temperature with a straight-through soft assignment and int8 tables in the loop (`train`),
and `export_tables` collects one `PQTable` per layer into a bundle. `tvm_lut.learn(model, batches, PQConfig())`
does all four (`tvm_lut.pq.handler.learn_pq` also returns the trained model, the swap report and
the history). `reference.pq_forward` is the PyTorch ground truth of PQ inference for the compiled kernels.
"""

from tvm_lut.pq import handler as _handler  # noqa: F401  (registers the PQConfig handler of tvm_lut.learn)
from tvm_lut.pq.config import PQConfig

__all__ = ["PQConfig"]
