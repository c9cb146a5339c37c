"""A small CNN for Fashion-MNIST with the layer kinds LUT-NN replaces: 3x3 convs, a 1x1 conv, linears.

28x28 -> conv3x3(1->32) -> pool -> conv3x3(32->64) -> pool -> conv1x1(64->64) -> pool -> 576 -> 128 -> 10.
90.0 % test accuracy after five epochs (about 4.5 minutes on one busy core).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tvm_lut.progress import progress_bar


class FashionCNN(nn.Module):
    """Logits (N, 10) for images (N, 1, 28, 28)."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.conv3 = nn.Conv2d(64, 64, 1)
        self.fc1 = nn.Linear(64 * 3 * 3, 128)
        self.fc2 = nn.Linear(128, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(F.relu(self.conv1(x)), 2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)
        x = F.max_pool2d(F.relu(self.conv3(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


def train_cnn(images: np.ndarray, labels: np.ndarray, epochs: int = 2, batch_size: int = 128, lr: float = 2e-3,
              seed: int = 0, progress: bool = True) -> FashionCNN:
    """Train a fresh `FashionCNN` with Adam on (images (N, 1, 28, 28) float32, labels (N,) int64); eval mode."""
    if len(images) != len(labels) or len(images) == 0:
        raise ValueError(f"need as many images as labels, and some: {len(images)} vs {len(labels)}")
    torch.manual_seed(seed)
    model = FashionCNN()
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    x, y = torch.from_numpy(images), torch.from_numpy(labels)
    gen = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(x) // batch_size)
    with progress_bar(total=steps, desc="training the CNN", unit="step", progress=progress) as bar:
        for _ in range(epochs):
            for idx in torch.randperm(len(x), generator=gen).split(batch_size):
                loss = F.cross_entropy(model(x[idx]), y[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                bar.update()
    return model.eval()
