#!/usr/bin/env bash
# The GPU check: the GPU-marked tests, then `launch/benchmark.py train` for BERT-base at sequence length 128 in
# bf16 and fp16, packing and the labelled-only head on and off. Sized for about 8 minutes of one NVIDIA GPU.
#
#   bash launch/gpu_check.sh --prepare      # here, with network or a pip cache: wheels into .whl/, the CSL sample
#                                           # into .gpu-data/ (both git-ignored through .git/info/exclude)
#   bash launch/gpu_check.sh [OUT_DIR]      # on the GPU machine, from the repository root (no network needed)
#
# The GPU machine needs a CUDA build of torch and transformers already installed; deepspeed, jieba and the
# rest come from .whl/ when that folder is there (../shared/tools/gpu-wheels.sh builds it). Every step writes
# its log and, for the benchmarks, the JSON line into OUT_DIR (default $OUT, else gpu-check/); a failing step
# is reported and the next one still runs; the exit status is the number of failed steps.
# Record the figures in docs/benchmarks.md ("GPU") with the date, the GPU and this command.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [[ ${1:-} == --prepare ]]; then
  set -e
  bash ../shared/tools/gpu-wheels.sh
  grep -qx '/.gpu-data/' .git/info/exclude 2>/dev/null || echo '/.gpu-data/' >> .git/info/exclude
  mkdir -p .gpu-data
  cp "${ACADEMIC_BERT_SHARED_DATA:-../shared/data}"/csl-dev.jsonl "${ACADEMIC_BERT_SHARED_DATA:-../shared/data}"/csl-dev.tsv .gpu-data/
  echo "ready: carry .whl and .gpu-data to the GPU machine, then run: bash launch/gpu_check.sh"
  exit 0
fi

out=${1:-${OUT:-gpu-check}}
mkdir -p "$out"
if [[ -d .whl ]] && ls .whl/*.whl >/dev/null 2>&1; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    || { echo "gpu_check: installing .whl/ failed" >&2; exit 1; }
  export PYTHONPATH=/tmp/site:$root${PYTHONPATH:+:$PYTHONPATH}
fi
[[ -d .gpu-data ]] && export ACADEMIC_BERT_SHARED_DATA=${ACADEMIC_BERT_SHARED_DATA:-$root/.gpu-data}
# A fresh extensions folder: a compile lock left by a killed process elsewhere must not stall this check.
export TORCH_EXTENSIONS_DIR=${TORCH_EXTENSIONS_DIR:-/tmp/academic-bert-gpu-check-extensions}
export WANDB_MODE=disabled TOKENIZERS_PARALLELISM=false

failed=0
step() {  # step NAME TIMEOUT_S COMMAND...: run with a time limit, log to OUT_DIR/NAME.log
  local name=$1 limit=$2; shift 2
  local started=$SECONDS
  echo "== $name (limit ${limit}s): $*"
  timeout "$limit" "$@" > "$out/$name.log" 2>&1
  local rc=$?
  tail -n 25 "$out/$name.log"
  echo "== $name: exit $rc after $((SECONDS - started)) s"
  [[ $rc == 0 ]] || failed=$((failed + 1))
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -c "import torch, transformers, deepspeed; print('torch', torch.__version__, 'cuda', torch.version.cuda, \
'| transformers', transformers.__version__, '| deepspeed', deepspeed.__version__, '| gpu', torch.cuda.get_device_name())"
} > "$out/versions.txt" 2>&1
cat "$out/versions.txt"

step gpu-tests 180 python3 -m pytest -q -m gpu -p no:cacheprovider tests/
for precision in bf16 fp16; do
  step "train-base-$precision" 120 python3 launch/benchmark.py train --preset base --precision "$precision" \
    --deepspeed-config ds_configs/2080ti.json --seq-len 128 --micro-batch 128 --steps 3 --rounds 3 --json
  tail -n 1 "$out/train-base-$precision.log" > "$out/train-base-$precision.json"
done
echo "gpu_check: $failed failed step(s); logs in $out/"
exit "$failed"
