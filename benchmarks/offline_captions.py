"""Offline enhancer: caption accuracy on the demo test split and cost per image.

    python benchmarks/offline_captions.py [--data data/demo]

Needs the demo corpus (`make demo` or `rar demo`). Fits the caption memory on the train
split exactly as the `offline_captioner` asset does, captions every test product photo
with a cold perception cache (OCR and features computed), and scores the captions against
the ground truth the builder wrote outside the data root.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

from rar_pipeline.core.corpus.mbeir import discover
from rar_pipeline.core.corpus.readers import read_candidates, read_queries
from rar_pipeline.core.corpus.records import Modality
from rar_pipeline.core.demo.evaluate import caption_accuracy
from rar_pipeline.core.enhance.engine import build_request, plan_candidate
from rar_pipeline.core.enhance.perception import Perceiver
from rar_pipeline.core.enhance.vlm.offline import CaptionMemory, OfflineVLM, train_pairs
from rar_pipeline.core.layout import demo_truth_file


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=Path("data/demo"))
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    layout = discover(args.data)
    candidates = {}
    for path in layout.pools.values():
        candidates.update({c.did: c for c in read_candidates(path, layout.root).rows})
    queries = [
        q
        for splits in layout.queries.values()
        for split, path in splits.items()
        for q in read_queries(path, layout.root, split=split).rows
    ]
    with tempfile.TemporaryDirectory() as cache:
        perceiver = Perceiver(Path(cache))
        started = time.perf_counter()
        memory = CaptionMemory.fit(train_pairs(queries, candidates, layout.root), perceiver)
        fit_s = time.perf_counter() - started
        vlm = OfflineVLM(memory, perceiver)
        # which photos to score comes from the truth file; the captioner never sees it
        truth = [json.loads(x) for x in demo_truth_file(layout.root).read_text().splitlines()]
        test_paths = {p["img_path"] for p in truth if p["split"] == "test"}
        photos = [
            c
            for c in candidates.values()
            if c.modality is Modality.IMAGE and c.img_path in test_paths
        ]
        requests = [build_request(plan_candidate(c, layout.root)) for c in photos]
        started = time.perf_counter()
        results = vlm.generate(requests)
        caption_s = time.perf_counter() - started
    captions = {c.img_path: r.text for c, r in zip(photos, results, strict=True) if r.ok}
    accuracy = caption_accuracy(captions, demo_truth_file(layout.root))
    print(f"memory: {len(memory)} train pairs, fitted in {fit_s:.1f}s")
    print(
        f"captioned {len(photos)} test photos in {caption_s:.1f}s "
        f"({caption_s / max(1, len(photos)):.3f} s/image, OCR + features + colours)"
    )
    print("accuracy:", accuracy)
    for result in results[:3]:
        print("  e.g.", result.text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
