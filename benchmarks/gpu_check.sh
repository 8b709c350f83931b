#!/usr/bin/env bash
# The GPU checks in one run, under 8 minutes on one H100/H200:
#   1. the CUDA tests (pytest -m gpu: CUDA == CPU vectors, packed varlen attention == the CPU stand-in)
#   2. fp16 / bf16 vs fp32 parity on CUDA for BERT-base-, jina-v3- and Qwen3-0.6B-size models
#   3. throughput of embedkit's packed path vs sentence-transformers (its best of batch 32 and 128, same
#      dtype and texts) with model-FLOPs utilisation against a bf16 GEMM timed in the same run
#
#   bash benchmarks/gpu_check.sh            # from the repository root; figures go to stdout
#
# It needs python3 with CUDA torch (>= 2.10, for torch.nn.attention.varlen), sentence-transformers and
# embedkit's dependencies. A machine without internet takes the missing ones as wheels in ./.whl, made
# beforehand on a machine with pip access:
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     'transformers>=5.24' tenacity qdrant-client portalocker grpcio h2 hpack hyperframe
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        && export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
status=0
run() { echo; echo "== $*"; "$@" || status=$?; }

run nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv
run python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)"
run python3 -m pytest -q -p no:cacheprovider -m gpu tests -o addopts="--import-mode=importlib -ra"
run python3 benchmarks/gpu_parity.py --texts 512
for model in bert-base jina-v3 qwen3-0.6b; do
    run python3 benchmarks/throughput.py --model "$model" --device cuda --dtype bfloat16 --texts 4096 --max-tokens 512
done
exit "$status"
