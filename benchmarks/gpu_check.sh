#!/usr/bin/env bash
# The GPU check of issue 13 in one run, sized for a lent machine: at most 5 minutes with the build,
# so a rerun fits in a session's 15 device-minutes. Steps, each timed, each under its own time
# limit and all under one deadline; a failed step is recorded and the next one still runs, and the
# exit status is nonzero when any step failed:
#   env      nvidia-smi, interpreter and library versions, the GPU's name
#   install  the carried wheels (wheels/, offline) and this project, editable, fatbins for this GPU
#   tests    the `gpu` / `cupy` tests (pytest --runslow), junit XML
#   bench    `sam2vss bench` at image size 1024: Hiera-T random weights, 25 masklets, window 32,
#            exact and fastest with --compare-reference
#   profile  torch.profiler over 3 steady frames of each preset, summarised (gpu_profile.py)
# Everything it writes goes under $OUT (the device tool's output folder; ./gpu_check_out when
# unset), at most 5 files (the tool brings back 8): gpu_check_<name>.log, junit_<name>.xml,
# bench_<name>.json, profile_<name>.json, profile_<name>.txt; <name> is sam2vss.hardware's (the GPU
# and torch, e.g. nvidia-h200-torch2.11.0). Scratch (the clip, pip targets) goes under $WORK
# (default a fresh temporary folder).
#
# --dry-run: the same steps on the CPU at image size 256 with a 3-frame clip of 64x96 and 2
# masklets (about a minute on 2 cores; tests/test_gpu_check.py runs it in the default suite), time
# limits tripled. It checks the installs with `pip install --dry-run` instead of installing
# (rebuilding would replace the running interpreter's package), and every CUDA-only part says it
# is skipped.
#
# On the lent machine (no registry; sam2, hydra-core, omegaconf, antlr4-python3-runtime, iopath
# come as wheels made here by `make wheels`, carried as `wheels`):  bash benchmarks/gpu_check.sh
set -u -o pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PYTHON:-python3}
BUDGET=${GPU_CHECK_BUDGET:-290}  # seconds for all steps together
FRAMES=${GPU_CHECK_FRAMES:-48}  # bench clip: one full window of 32, then 16
SCALE=1  # time limits x3 in the dry run: a busy 2-core CPU, where they only catch hangs
START=$SECONDS
STEPS=()
RESULTS=()
FAILED=0

# step NAME LIMIT FUNCTION: run the (exported) shell function in a child bash under
# min(LIMIT, time left before the deadline); timeout signals the child's whole process group, so
# a hung Python below it goes too. Prints the step's time and records ok / failed (exit code) /
# timed out; never stops the script.
step() {
  local name=$1 limit=$2 fn=$3 left rc t0
  limit=$((limit * SCALE))
  left=$((BUDGET * SCALE - (SECONDS - START)))
  ((limit > left)) && limit=$left
  echo
  echo "== step $name (limit ${limit} s)"
  if ((limit <= 0)); then
    STEPS+=("$name")
    RESULTS+=("skipped: no time left of the $((BUDGET * SCALE)) s budget")
    FAILED=1
    return 0
  fi
  t0=$(date +%s.%N)
  timeout --kill-after=10 "$limit" bash -c "$fn"
  rc=$?
  local dt
  dt=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN { printf "%.1f", b - a }')
  STEPS+=("$name")
  if ((rc == 0)); then
    RESULTS+=("ok ${dt} s")
  elif ((rc == 124 || rc == 137)); then
    RESULTS+=("TIMED OUT after ${dt} s (limit ${limit} s)")
    FAILED=1
  else
    RESULTS+=("FAILED (exit ${rc}) after ${dt} s")
    FAILED=1
  fi
  echo "== step $name: ${RESULTS[-1]}"
  return 0
}

summary() {
  echo
  echo "== gpu_check summary ($((SECONDS - START)) s of $((BUDGET * SCALE)) s)"
  local i
  for i in "${!STEPS[@]}"; do
    printf '  %-8s %s\n' "${STEPS[$i]}" "${RESULTS[$i]}"
  done
  return $FAILED
}

check_env() {
  if [[ $DRY == 1 ]]; then
    echo "dry run: no nvidia-smi (CPU only)"
  else
    nvidia-smi || return 1
    nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version,clocks.max.sm --format=csv
  fi
  uname -m
  nproc
  "$PY" - <<'EOF' || return 1
import importlib.metadata as md, platform, shutil, subprocess
print("python", platform.python_version(), platform.machine())
for dist in ("torch", "torchvision", "cupy-cuda13x", "numpy", "sam2", "hydra-core", "omegaconf",
             "antlr4-python3-runtime", "iopath", "av", "scikit-build-core", "cmake", "pytest", "sam2vss"):
    try:
        print(f"{dist} {md.version(dist)}")
    except md.PackageNotFoundError:
        print(f"{dist} not installed")
import torch
print("torch.cuda", torch.version.cuda, "available", torch.cuda.is_available(),
      "devices", torch.cuda.device_count())
if torch.cuda.is_available():
    print("device 0:", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
nvcc = shutil.which("nvcc") or "/usr/local/cuda/bin/nvcc"
try:
    print(subprocess.run([nvcc, "--version"], capture_output=True, text=True).stdout.strip().splitlines()[-1])
except (OSError, IndexError):
    print("nvcc not found")
EOF
}

check_install() {
  local dry=() cuda=()
  [[ $DRY == 1 ]] && dry=(--dry-run)
  if compgen -G "$ROOT/wheels/*.whl" >/dev/null; then
    # --target + PYTHONPATH (device README): nothing of the image's own environment is replaced.
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade "${dry[@]}" \
      --target "$WORK/site" "$ROOT"/wheels/*.whl || return 1
  elif [[ $DRY == 1 ]]; then
    echo "no wheels/ (make wheels builds them): the wheel install is not checked"
  else
    echo "error: no wheels in $ROOT/wheels: run \`make wheels\` on the dev machine and carry wheels" >&2
    return 1
  fi
  # Fatbins for this GPU's SM only (the default builds four archs: minutes of nvcc on few cores).
  local sm
  sm=$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -1 | tr -d '. ')
  [[ -n $sm ]] && cuda=(-C "cmake.define.SAM2VSS_CUDA_ARCHS=$sm")
  if [[ $DRY == 1 ]] && ! "$PY" -c "import scikit_build_core" 2>/dev/null; then
    echo "scikit-build-core is not in this interpreter (the lent machine has it; \`make install\` builds"
    echo "with isolation): the --no-build-isolation install of the project is not checked"
  else
    "$PY" -m pip install -q --no-index --no-deps --no-build-isolation "${dry[@]}" "${cuda[@]}" -e "$ROOT" \
      || return 1
  fi
  "$PY" -c "import sam2, sam2vss, sam2vss._host; print('imports: sam2', sam2.__file__, '| sam2vss', sam2vss.__file__)"
}

check_tests() {
  [[ $DRY == 1 ]] && echo "dry run: every gpu / cupy test is collected and skipped (no CUDA)"
  (cd "$ROOT" && "$PY" -m pytest -q -rs -p no:cacheprovider --runslow -m "gpu or cupy" \
    --junitxml="$OUT/junit_$NAME.xml" tests)
}

check_bench() {
  # shellcheck disable=SC2086  # SIZE: flags, split on purpose
  (cd "$WORK" && "$PY" -m sam2vss bench -q $SIZE --masklets "$MASKLETS" --window "$WINDOW" \
    --preset exact,fastest --compare-reference --data-dir "$WORK/data" --json "$OUT/bench_$NAME.json")
}

check_profile() {
  [[ $DRY == 1 ]] && echo "dry run: host ops only (no CUDA kernels, no GPU idle share)"
  # shellcheck disable=SC2086
  "$PY" "$ROOT/benchmarks/gpu_profile.py" $SIZE --masklets "$MASKLETS" --window "$PWINDOW" \
    --presets exact,fastest --data-dir "$WORK/data" --out "$OUT" --name "$NAME"
}

main() {
  DRY=0
  case "${1:-}" in
    --dry-run) DRY=1 ;;
    "") ;;
    *) echo "usage: $0 [--dry-run]" >&2; return 2 ;;
  esac
  # Absolute: the bench step runs from $WORK. A venv's python stays the link it is (not resolved).
  [[ $PY == */* ]] && PY=$(cd "$(dirname "$PY")" && pwd)/$(basename "$PY")
  OUT=${OUT:-$ROOT/gpu_check_out}
  WORK=${WORK:-$(mktemp -d "${TMPDIR:-/tmp}/sam2vss_gpu_check.XXXXXX")}
  mkdir -p "$OUT" "$WORK"
  export PYTHONUNBUFFERED=1 PYTHONPATH="$WORK/site${PYTHONPATH:+:$PYTHONPATH}"
  if [[ $DRY == 1 ]]; then
    NAME=dryrun-cpu MASKLETS=2 WINDOW=3 PWINDOW=3 SCALE=3
    SIZE="--image-size 256 --frames 3 --height 64 --width 96"
  else
    # The results' name, e.g. nvidia-h200-torch2.11.0: sam2vss.hardware, read from the source tree
    # (it imports only torch; the package is not installed yet).
    NAME=$(PYTHONPATH="$ROOT/python" "$PY" -m sam2vss.hardware cuda 2>/dev/null)
    NAME=${NAME:-unknown-gpu}
    MASKLETS=25 WINDOW=32 PWINDOW=20
    SIZE="--image-size 1024 --frames $FRAMES"
  fi
  export DRY PY ROOT OUT WORK NAME MASKLETS WINDOW PWINDOW SIZE
  export -f check_env check_install check_tests check_bench check_profile
  echo "gpu_check: results named $NAME in $OUT; scratch in $WORK; dry run $DRY"
  {
    step env 30 check_env
    step install 150 check_install
    if ! "$PY" -c "import sam2vss" 2>/dev/null; then  # keep going from the source tree
      export PYTHONPATH="$ROOT/python:$PYTHONPATH"
      echo "sam2vss is not installed: the next steps import it from $ROOT/python (no host kernels;"
      echo "CuPy compiles the kernels from kernels/*.cu with NVRTC)"
    fi
    step tests 90 check_tests
    step bench 150 check_bench
    step profile 90 check_profile
    summary
  } 2>&1 | tee "$OUT/gpu_check_$NAME.log"
}

if [[ "${BASH_SOURCE[0]}" == "$0" ]]; then
  main "$@"
fi
