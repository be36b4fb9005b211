#!/usr/bin/env bash
# The GPU check of issue 18 in one run (docs/benchmarks.md, "On a GPU"): the `gpu`-marked tests on CUDA, then
# check.py (precision, the cost table, the GPU options). Results go to $OUT (the device tool's folder) or to
# gpu-check/: pytest.log, check.log, results.json, results.md and cost/{results.json,results.md,figure.png}.
#
#   benchmarks/gpu/run.sh                       # on the GPU machine, from the repository root
#   benchmarks/gpu/run.sh --device cpu --tiny   # the rehearsal on a CPU (about a minute)
#
# Arguments go to check.py. The tests run only where CUDA is (on a CPU every `gpu` case is skipped anyway).
set -u -o pipefail
cd "$(dirname "$0")/../.."
out="${OUT:-gpu-check}"
mkdir -p "$out"
export PYTHONPATH=src PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
python=$(command -v python3 || command -v python)
"$python" -c "import torch, transformers, peft, accelerate; print('torch', torch.__version__, 'cuda', torch.cuda.is_available(), 'transformers', transformers.__version__, 'peft', peft.__version__, 'accelerate', accelerate.__version__)" | tee "$out/check.log"
if "$python" -c "import sys, torch; sys.exit(not torch.cuda.is_available())"; then
  timeout 100 "$python" -m pytest -m gpu -p no:cacheprovider -q -s -rfEs --continue-on-collection-errors tests 2>&1 | tee "$out/pytest.log"
fi
timeout 360 "$python" benchmarks/gpu/check.py --out "$out" "$@" 2>&1 | tee -a "$out/check.log"
