#!/usr/bin/env bash
# One command on a CUDA machine: install the missing Python packages from wheels carried in .whl/,
# build the extension (C++ and CUDA) against the machine's own torch, run the CUDA tests, then the
# GAE, CG, critic-fit, update, population and VMAS-population benchmarks on the GPU; JSON per benchmark and a
# markdown summary in $OUT_DIR.
#
# The target: our GPU test machines (H100/H200, Python 3.12, torch 2.11 + CUDA 13, nvcc, ninja,
# pytest, numpy, pyyaml, tqdm, matplotlib, cloudpickle, packaging) have no torchrl, tensordict,
# gymnasium or mujoco and no package registry. Those travel as cp312 wheels in the git-ignored
# folder .whl/ at the repository root. Fetch them on a machine with registry access:
#
#   bash benchmarks/run_gpu.sh download
#
# which runs, for each NAME==VERSION in WHEELS below (the device tool's README gives this line):
#
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
#     --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl NAME==VERSION
#
# and builds wheels of the source-only pure-Python packages in BUILT (`pip wheel --no-deps`).
# (.whl/ is in .gitignore; keep one version of each package there.) Then, on the GPU machine:
#
#   bash benchmarks/run_gpu.sh                 # OUT_DIR defaults to $OUT (the device tool's) or bench_out/gpu
#
# Environment: PYTHON (default python3), OUT_DIR, TORCH_CUDA_ARCH_LIST (default 9.0: H100/H200),
# MAX_JOBS, SKIP_TESTS=1 (benchmarks only), QUICK=1 (the benchmarks' --quick modes).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

PYTHON=${PYTHON:-python3}
# what the GPU image lacks (see the header); versions match the tested CPU environment
WHEELS=(
  torchrl==0.14.1 tensordict==0.14.3 pyvers==0.2.3 hoptorch==0.1.4 importlib_metadata==10.2.0 orjson==3.13.0
  gymnasium==1.4.0 farama-notifications==0.0.6
  mujoco==4.0.0 mujoco-core==4.0.0 mujoco-studio==4.0.0 glfw==2.11.0 pyopengl==3.1.10 websockets==17.4
  gym-notices==0.0.8 pyglet==1.5.27 six==1.17.0
)
# pure-Python packages published as source only: built into wheels by the download step
BUILT=(vmas==1.5.2 gym==0.26.2)

if [ "${1:-}" = "download" ]; then
  mkdir -p .whl
  for spec in "${WHEELS[@]}"; do
    "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
      --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
      --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$spec"
  done
  "$PYTHON" -m pip wheel -q --no-deps -w .whl "${BUILT[@]}"
  ls -la .whl
  exit 0
fi

OUT_DIR=${OUT_DIR:-${OUT:-bench_out/gpu}}
mkdir -p "$OUT_DIR"
OUT_DIR=$(cd "$OUT_DIR" && pwd)
LOG="$OUT_DIR/run_gpu.log"
exec > >(tee -a "$LOG") 2>&1
echo "run_gpu: $(date -u '+%Y-%m-%d %H:%M UTC') on $(hostname), results in $OUT_DIR"

# 1. packages: from the carried wheels into a private target folder (nothing installed system-wide)
SITE=${SITE:-/tmp/trpo_torchrl_site}
if ! "$PYTHON" -c "import torchrl, tensordict, gymnasium, mujoco, vmas" 2>/dev/null; then
  if ! ls .whl/*.whl >/dev/null 2>&1; then
    echo "run_gpu: torchrl/tensordict/gymnasium/mujoco are missing and .whl/ holds no wheels;"
    echo "         run 'bash benchmarks/run_gpu.sh download' where a registry is reachable, then carry .whl/"
    exit 2
  fi
  "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl
  export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
"$PYTHON" -c "import torch, torchrl, tensordict, gymnasium; print('run_gpu: torch', torch.__version__, '| cuda', torch.version.cuda, '| gpu', torch.cuda.get_device_name() if torch.cuda.is_available() else None, '| torchrl', torchrl.__version__, '| tensordict', tensordict.__version__, '| gymnasium', gymnasium.__version__)"

# 2. the extension, built here against this machine's torch (a build from elsewhere will not load)
export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
export MAX_JOBS=${MAX_JOBS:-$(nproc)}
FORCE_CUDA=1 "$PYTHON" setup.py build_ext --inplace
"$PYTHON" -c "import trpo_torchrl, torch; assert trpo_torchrl.extension_loaded(), 'the compiled ops did not load'; print('run_gpu: compiled ops loaded; CUDA kernels:', torch._C._dispatch_has_kernel_for_dispatch_key('trpo_torchrl::gae', 'CUDA'))"

# 3-4. the CUDA tests, then the benchmarks on the GPU. GPU time is scarce, so a failing step is
# reported and the next one still runs; the script's exit status says whether any failed.
FAILED=()
step() {
  local name=$1; shift
  local t0=$SECONDS
  echo "run_gpu: [$name] $*"
  if "$@"; then
    echo "run_gpu: [$name] ok in $((SECONDS - t0)) s"
  else
    echo "run_gpu: [$name] FAILED (exit $?) after $((SECONDS - t0)) s"
    FAILED+=("$name")
  fi
}
if [ "${SKIP_TESTS:-0}" != "1" ]; then
  step tests "$PYTHON" -m pytest -q -p no:cacheprovider -m cuda tests --junitxml "$OUT_DIR/cuda_tests.xml"
fi
QUICK_FLAG=()
[ "${QUICK:-0}" = "1" ] && QUICK_FLAG=(--quick)
step gae "$PYTHON" benchmarks/gae.py --device cuda "${QUICK_FLAG[@]}" --out "$OUT_DIR/gae.json"
step cg "$PYTHON" benchmarks/cg.py --device cuda "${QUICK_FLAG[@]}" --out "$OUT_DIR/cg.json"
step critic_fit "$PYTHON" benchmarks/critic_fit.py --device all "${QUICK_FLAG[@]}" --out "$OUT_DIR/critic_fit.json"
step update_cuda "$PYTHON" benchmarks/update.py --device cuda --no-peer "${QUICK_FLAG[@]}" --out "$OUT_DIR/update_cuda.json"
step update_cpu "$PYTHON" benchmarks/update.py --device cpu --no-peer "${QUICK_FLAG[@]}" --out "$OUT_DIR/update_cpu.json"
# populations (issue 8's CUDA target: 64 members in one update at most 2x one member)
step population "$PYTHON" benchmarks/population.py --device cuda "${QUICK_FLAG[@]}" --out "$OUT_DIR/population.json"
# seeds on a simulator on the GPU (issue 21: M = 64 members of VMAS navigation against M = 1)
step population_vmas "$PYTHON" benchmarks/population_vmas.py --device cuda --out "$OUT_DIR/population_vmas.json"

# 5. one markdown summary of the JSON files
"$PYTHON" benchmarks/gpu_summary.py "$OUT_DIR" > "$OUT_DIR/results.md"
cat "$OUT_DIR/results.md"
echo "run_gpu: done; JSON, results.md and run_gpu.log in $OUT_DIR"
if [ ${#FAILED[@]} -gt 0 ]; then
  echo "run_gpu: failed steps: ${FAILED[*]}"
  exit 1
fi
