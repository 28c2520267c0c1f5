"""Smoke-test and time the vLLM backend on a GPU machine with the demo corpus's images.

    python benchmarks/gpu_vllm_smoke.py --data data/demo [--model Qwen/Qwen2.5-VL-7B-Instruct]
        [--n 32] [--show 5]

Picks N distinct images from the candidate pools (cand_pool/local/*.jsonl), captions them
with the corpus-caption prompt through `VLLMVLM`, prints the first outputs, the engine load
time, the generation time and the throughput. Needs vLLM (the `[gpu]` extra, CUDA only):
without it, it exits with status 2.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from rar_pipeline.core.enhance.prompts import CORPUS_CAPTION
from rar_pipeline.core.enhance.vlm.base import VLMRequest
from rar_pipeline.core.enhance.vlm.config import DEFAULT_MODEL, VLLMConfig
from rar_pipeline.core.enhance.vlm.vllm import VLLMVLM


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, required=True, help="demo data root (data/demo)")
    parser.add_argument("--model", default=DEFAULT_MODEL, help="image-text-to-text model id")
    parser.add_argument("--n", type=int, default=32, help="how many images to caption")
    parser.add_argument("--show", type=int, default=5, help="how many outputs to print")
    parser.add_argument("--max-model-len", type=int, default=8192)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.85)
    return parser.parse_args(argv)


def pool_image_paths(data: Path, n: int) -> list[str]:
    """The first `n` distinct img_path values of the local candidate pools, in file order."""
    seen: dict[str, None] = {}
    for pool in sorted((data / "cand_pool" / "local").glob("*.jsonl")):
        with pool.open(encoding="utf-8") as f:
            for line in f:
                if not line.strip():
                    continue
                img = json.loads(line).get("img_path")
                if img:
                    seen.setdefault(img, None)
                    if len(seen) >= n:
                        return list(seen)
    return list(seen)


def caption_requests(data: Path, img_paths: list[str]) -> list[VLMRequest]:
    return [CORPUS_CAPTION.request(None, data / img) for img in img_paths]


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        import vllm  # noqa: F401 - only to fail early, before reading any data
    except ImportError as exc:
        print(
            f"vLLM is not importable ({exc}). Run this on a CUDA machine with the [gpu] extra: "
            "pip install -e '.[gpu]'",
            file=sys.stderr,
        )
        return 2

    img_paths = pool_image_paths(args.data, args.n)
    if not img_paths:
        print(f"no images in {args.data / 'cand_pool' / 'local'}/*.jsonl", file=sys.stderr)
        return 1
    requests = caption_requests(args.data, img_paths)

    vlm = VLLMVLM(
        model_id=args.model,
        config=VLLMConfig(
            max_model_len=args.max_model_len, gpu_memory_utilization=args.gpu_memory_utilization
        ),
    )
    t0 = time.perf_counter()
    vlm.load()
    load_s = time.perf_counter() - t0

    t1 = time.perf_counter()
    results = vlm.generate(requests)
    gen_s = time.perf_counter() - t1

    for img, result in list(zip(img_paths, results, strict=True))[: args.show]:
        shown = result.text if result.ok else f"ERROR {result.error}"
        print(f"{img}\n  {shown}")
    n_ok = sum(r.ok for r in results)
    print(f"model: {vlm.model_id}")
    print(f"items: {len(results)} ({n_ok} ok, {len(results) - n_ok} failed)")
    print(f"load seconds: {load_s:.1f}")
    print(f"generation seconds: {gen_s:.2f}")
    print(f"items/s: {len(results) / gen_s if gen_s > 0 else float('inf'):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
