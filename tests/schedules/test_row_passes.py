"""The hand-scheduled softmax / LayerNorm rows (`schedules.kernels.row_passes`) inside a whole Relax build."""

import numpy as np
import torch
import tvm
from torch import nn
from tvm import relax

import tvm_lut
from schedules import host_target
from tvm_lut.frontend import from_torch


class Attention(nn.Module):
    """Scores of two heads scaled and masked before the softmax, LayerNorm after the residual: MiniLM's order,
    where Relax's RewriteDataflowReshape once read the row kernels as block-structured TIR and failed the build."""

    def __init__(self):
        super().__init__()
        self.q, self.norm = nn.Linear(16, 16), nn.LayerNorm(16)

    def forward(self, x, mask):
        b, t, _ = x.shape
        q = self.q(x).view(b, t, 2, 8).transpose(1, 2)
        scores = q @ q.transpose(-1, -2) / 8 ** 0.5 + mask
        heads = torch.softmax(scores, dim=-1) @ q
        return self.norm(heads.transpose(1, 2).reshape(b, t, 16) + x)


def test_attention_block_builds_and_runs_with_table_softmax_and_layer_norm():
    torch.manual_seed(0)
    model = Attention().eval()
    x, mask = torch.randn(2, 8, 16), torch.zeros(2, 1, 1, 8)
    mask[1, ..., 6:] = -1e4
    executable = tvm_lut.compile(from_torch(model, (x, mask)), target=host_target(1), nonlinear=True)
    run = relax.VirtualMachine(executable, tvm.cpu())["main"]
    got = run(tvm.runtime.tensor(x.numpy()), tvm.runtime.tensor(mask.numpy())).numpy()
    with torch.no_grad():
        np.testing.assert_allclose(got, model(x, mask).numpy(), atol=0.05)
