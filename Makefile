# Two commands on a fresh machine (Python 3.11, no GPU):
#   make demo   install, then run the demo on generated data
#   make test   install, then run the tests
PYTHON ?= python3
PIP := $(PYTHON) -m pip
TORCH_CPU := torch==2.13.0
# The index torch==2.13.0 comes from: empty, pip's configured index (the CPU
# build on machines whose index serves it); on PyPI, whose Linux wheels are
# CUDA builds, `make install TORCH_INDEX=https://download.pytorch.org/whl/cpu`
TORCH_INDEX ?=

.PHONY: install demo test

# Keep an existing torch >= 2.1 (GPU users bring their own); otherwise take
# torch==2.13.0 (from TORCH_INDEX if given), so that installing mmselds never
# replaces a user's torch build.
install:
	@$(PYTHON) -c "import sys, torch; \
v = tuple(int(p) for p in torch.__version__.split('+')[0].split('.')[:2]); \
sys.exit(v < (2, 1))" 2>/dev/null || $(PIP) install $(if $(TORCH_INDEX),--index-url $(TORCH_INDEX)) $(TORCH_CPU)
	$(PIP) install -e ".[tests]"

demo: install
	$(PYTHON) tools/demo.py --work-dir work_dirs/demo

test: install
	$(PYTHON) -m pytest tests
