"""What several benchmarks share and none runs alone: the engines a torch model runs on, the zoo's architectures."""
