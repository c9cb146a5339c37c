"""tvm-lut: run neural networks on table lookups with Apache TVM (Relax + TensorIR)."""

from setuptools import find_packages, setup

# Exact pins: the newest apache-tvm-ffi segfaults when IR is serialized (tensorize, tuning
# databases), and any torch other than the 2.13.0 CPU wheel downloads several GB of CUDA.
INSTALL_REQUIRES = [
    "apache-tvm==0.27.0.post1",
    "apache-tvm-ffi==0.1.14.post0",
    "torch==2.13.0",
    "numpy",
    "safetensors",
    "tokenizers",
    "pandas",
    "scikit-learn",
    "tqdm",
    "matplotlib",
    "onnx",
    "onnxruntime",
    "xgboost-cpu",
    "psutil",  # MetaSchedule's builder and runner pools need it (tvm-lut tune)
]

TEST_REQUIRES = ["pytest", "nbclient", "nbformat", "ipykernel"]
# benchmarks.zoo builds its architectures from transformers configurations (random weights, nothing downloaded).
# Never add torchvision: its wheel does not load with the CPU torch, and transformers' vision models then fail.
BENCH_REQUIRES = ["transformers==5.23.0"]

setup(
    name="tvm-lut",
    version="0.1.0",
    description="Table-lookup neural network inference for Apache TVM (NN-LUT and LUT-NN)",
    python_requires=">=3.11",
    packages=find_packages(include=["tvm_lut*", "relay_passes*", "schedules*"]),
    package_data={"tvm_lut": ["*.safetensors", "data/*.safetensors", "data/*.json"]},
    install_requires=INSTALL_REQUIRES,
    extras_require={"test": TEST_REQUIRES, "bench": BENCH_REQUIRES},
    entry_points={"console_scripts": ["tvm-lut=tvm_lut.cli:main"]},
)
