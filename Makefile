# Two commands do all the set-up (README): `make demo` and `make test`.
# Both create .venv and install the pinned stack in the order DESIGN.md requires:
# torch first (the pinned CUDA build, which also runs on a CPU), then sam2 built against it
# without build isolation, then this package (scikit-build-core, editable) and its dev tools.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.sam2vss-installed
PYTEST_ARGS ?=

.PHONY: install demo test test-all lint bench wheels clean

install: $(STAMP)

$(STAMP): pyproject.toml CMakeLists.txt Makefile $(wildcard engine/*.cpp kernels/*.cu kernels/*.cuh)
	@# torchcodec loads FFmpeg's shared libraries from the system (Debian's ffmpeg); as root on
	@# Debian/Ubuntu they are installed here, elsewhere the torchcodec decoder reports itself missing.
	command -v ffmpeg >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null \
	  && { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg >/dev/null; }; }; } \
	  || echo "warning: FFmpeg libraries not installed; the torchcodec decoder will be unavailable (apt-get install ffmpeg)"
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check torch==2.14.1 torchvision==0.29.1
	SAM2_BUILD_CUDA=0 $(BIN)/python -m pip install --quiet --disable-pip-version-check --no-build-isolation sam2==1.1.0
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: install
	$(BIN)/sam2vss demo

test: install
	$(BIN)/python -m pytest -q $(PYTEST_ARGS)

test-all: install
	SAM2VSS_RUN_SLOW=1 $(BIN)/python -m pytest -q $(PYTEST_ARGS)

lint: install
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

bench: install
	$(BIN)/python benchmarks/bench_eval.py

# Wheels for a lent GPU machine without registry access (benchmarks/gpu_check.sh installs them).
wheels: install
	PYTHON=$(BIN)/python bash benchmarks/make_wheels.sh

clean:
	rm -rf $(VENV) build demo_out
