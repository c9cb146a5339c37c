"""Fashion-MNIST from the Debian package `dataset-fashion-mnist` (scripts/install_system_deps.sh installs it).

The official split: 60,000 training images (learning and calibration draw only from these) and 10,000 test
images (held out, only for accuracy). Images are returned as float32 (N, 1, 28, 28) in [0, 1], labels int64.
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

DEFAULT_DIR = Path("/usr/share/datasets/fashion-mnist")
CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
          "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}
_IDX_TYPES = {0x08: np.uint8}


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file (optionally gzipped): big-endian magic `0 0 type ndim`, ndim int32 sizes, then the data."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as handle:
        raw = handle.read()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path}: not an IDX file of unsigned bytes (magic {raw[:4].hex()})")
    ndim = raw[3]
    dims = np.frombuffer(raw, ">i4", count=ndim, offset=4)
    offset = 4 + 4 * ndim
    if len(raw) - offset != int(np.prod(dims)):
        raise ValueError(f"{path}: header says {tuple(dims)} ({int(np.prod(dims))} bytes), file has {len(raw) - offset}")
    return np.frombuffer(raw, _IDX_TYPES[raw[2]], offset=offset).reshape(tuple(int(d) for d in dims))


def load_fashion_mnist(split: str, root: str | Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(images float32 (N, 1, 28, 28) in [0, 1], labels int64 (N,)) of the "train" or "test" split."""
    if split not in _FILES:
        raise ValueError(f"split must be one of {tuple(_FILES)}, got {split!r}")
    root = Path(root) if root is not None else DEFAULT_DIR
    paths = [root / name for name in _FILES[split]]
    missing = [str(p) for p in paths if not p.exists()]
    if missing:
        raise FileNotFoundError(f"Fashion-MNIST files missing: {missing}; run scripts/install_system_deps.sh "
                                "(apt-get install dataset-fashion-mnist)")
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.shape != images.shape[:1]:
        raise ValueError(f"{root}: {images.shape} images do not match {labels.shape} labels")
    return (images[:, None].astype(np.float32) / 255.0), labels.astype(np.int64)
