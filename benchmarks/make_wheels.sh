#!/usr/bin/env bash
# `make wheels`: the Python packages benchmarks/gpu_check.sh needs on a lent GPU machine that the
# machine lacks and cannot fetch (it reaches no registry), as wheels in wheels/ (gitignored, never
# committed; the device tool carries it: carry ["wheels"]). Versions are this venv's, so the GPU
# runs the stack the tests run here:
#   sam2 (SAM2_BUILD_CUDA=0, built against this venv's torch without isolation), hydra-core,
#   omegaconf, antlr4-python3-runtime, iopath: pure-Python wheels, about 600 KB together;
#   av (PyAV, FFmpeg bundled): the CPython 3.12 manylinux x86-64 wheel, about 35 MB, for the tests
#   that decode video files (the lent machine runs Python 3.12 whatever runs here).
# Everything else the package imports is in the machine's image (the device docs' KINDS.md).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-$ROOT/.venv/bin/python}
DEST=${WHEELS:-$ROOT/wheels}

version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

pure=()
for dist in sam2 hydra-core omegaconf antlr4-python3-runtime iopath; do
  pure+=("$dist==$(version "$dist")")
done
av="av==$(version av)"
rm -rf "$DEST"
mkdir -p "$DEST"
SAM2_BUILD_CUDA=0 "$PY" -m pip wheel -q --disable-pip-version-check --no-deps --no-build-isolation \
  -w "$DEST" "${pure[@]}"
# pip matches manylinux tags exactly: name the usual ones (the device README's list).
"$PY" -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: \
  --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d "$DEST" "$av"
shopt -s nullglob
wheels=("$DEST"/*.whl)
if ((${#wheels[@]} != 6)); then
  echo "make_wheels: expected 6 wheels (${pure[*]} $av) in $DEST, found ${#wheels[@]}" >&2
  exit 1
fi
for w in "${wheels[@]}"; do
  case $(basename "$w") in
    av-*) ;;
    *-py3-none-any.whl) ;;
    *) echo "make_wheels: $(basename "$w") is not pure Python: the lent machine may not load it" >&2; exit 1 ;;
  esac
done
ls -l "$DEST"
du -sh "$DEST"
