"""fp16 and bf16 against fp32 on CUDA, for BERT-base-, jina-v3- and Qwen3-0.6B-size models, in one run.

    python benchmarks/gpu_parity.py --texts 512

Each model is built with random weights at its real size (throughput.py's checkpoints), loaded once per
dtype on the GPU, and the same texts embedded; printed: min and mean cosine of the fp16 / bf16 vectors
against fp32's, per model. Half precision keeps 10 (fp16) or 7 (bf16) mantissa bits, so cosines near
0.999 (fp16) and 0.99 (bf16) are what rounding alone gives; a wrong kernel gives far less.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from throughput import MODELS, corpus

import embedkit

DTYPES = ("float16", "bfloat16")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="bert-base,jina-v3,qwen3-0.6b")
    parser.add_argument("--texts", type=int, default=512)
    parser.add_argument("--max-tokens", type=int, default=512)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("needs a CUDA device")
    torch.manual_seed(0)
    texts = corpus(args.texts, 10, args.max_tokens, seed=0)
    device = torch.cuda.get_device_name()
    print(f"{device}, torch {torch.__version__}; {len(texts)} texts of 10..{args.max_tokens} words")
    print(f"{'model':12} {'dtype':9} {'min cos':>9} {'mean cos':>9}")
    with tempfile.TemporaryDirectory() as workdir:
        for name in args.models.split(","):
            model_dir = MODELS[name](Path(workdir))
            reference = embedkit.load(model_dir, device="cuda", dtype="float32").embed(texts)
            torch.cuda.empty_cache()
            for dtype in DTYPES:
                vectors = embedkit.load(model_dir, device="cuda", dtype=dtype).embed(texts)
                cosines = np.sum(vectors * reference, axis=1)
                print(f"{name:12} {dtype:9} {cosines.min():9.5f} {cosines.mean():9.5f}", flush=True)
                torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
