"""Plan items, run a VLM over them through the cache with retries, enforce the prompts' caps.

    plan_candidate / plan_query   item -> WorkItem (which prompt, which image, which txt)
    run_enhancement               WorkItems -> generated text per item, via cache and VLM

Merging generated text into what the retriever embeds is `core.enhance.merge`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rar_pipeline.core.config import Section, setting
from rar_pipeline.core.corpus.mbeir import resolve_in_root
from rar_pipeline.core.corpus.records import Candidate, Query
from rar_pipeline.core.enhance.cache import CacheEntry, EnhancementCache, cache_key, content_hash
from rar_pipeline.core.enhance.classify import (
    CandidateType,
    QueryType,
    classify_candidate,
    classify_query,
)
from rar_pipeline.core.enhance.guard import GuardPolicy
from rar_pipeline.core.enhance.output_rules import check_output
from rar_pipeline.core.enhance.prompt_file import prompt_set
from rar_pipeline.core.enhance.prompts import PromptSpec, prompt_for
from rar_pipeline.core.enhance.vlm.base import VLM, VLMRequest, VLMResult, results_for_batch_error
from rar_pipeline.core.files import file_hash


class EnhanceOptions(Section):
    """How a run enhances items with the VLM, and when its checks warn or block."""

    temperature: float = setting(
        0.0, "sampling temperature (0: greedy, the method's default)", ge=0, le=10
    )
    seed: int = setting(0, "sampling seed", ge=0)
    batch_size: int = setting(32, "requests per VLM.generate call", ge=1, le=100_000)
    max_attempts: int = setting(
        3, "tries per item for backend errors and empty outputs", ge=1, le=100
    )
    guard: GuardPolicy = setting(
        GuardPolicy.KEEP, "what the hallucination guard does with entities that contradict "
        "an item's own text", env="RAR_HALLUCINATION_POLICY", flag="--hallucination-policy",
    )  # fmt: skip
    query_type_overrides: dict[str, str] = setting(
        default_factory=dict, description="task -> qa or modification, for image+text "
        "queries whose phrasing the method's question rule routes wrongly (JSON)",
    )  # fmt: skip
    max_failure_rate: float = setting(
        0.02, "the failure-rate checks warn above this share of items", ge=0, le=1
    )
    min_caption_coverage: float = setting(
        0.5, "below this share of image items captioned, a shard's captions block what "
        "reads them (a VLM outage must not flow into training)", ge=0, le=1,
    )  # fmt: skip
    prompts: str = setting(
        "", "a TOML file of prompt overrides (`rar prompts` prints one to start from); "
        "relative to the project folder; what it changes is part of the prompts' versions",
        env="RAR_PROMPTS", flag="--prompts", shown="none: the shipped prompts",
    )  # fmt: skip

    def prompt_set(self) -> dict[str, PromptSpec]:
        """The prompts in force: the shipped ones with the `prompts` file's overrides."""
        return prompt_set(self.prompts)


DEFAULT_OPTIONS = EnhanceOptions()


@dataclass(frozen=True)
class WorkItem:
    """One item to enhance.

    Attributes:
        item_id: the did, or the query's `key` (split and qid): unique within a run.
        item_type: the candidate or query type.
        spec: the prompt; None for items that pass through unchanged (text-only).
        txt: the item's own text.
        image_path: the item's image, resolved inside the data root; None when the prompt
            must not see it (modification) or there is none.
    """

    item_id: str
    item_type: CandidateType | QueryType
    spec: PromptSpec | None
    txt: str | None
    image_path: Path | None


@dataclass(frozen=True)
class ItemOutput:
    """What enhancement produced for one item."""

    item_id: str
    item_type: CandidateType | QueryType
    generated: str | None  # the caption / rewrite / constraints, cleaned
    status: str  # passthrough | generated | cached | failed
    error: str | None = None
    attempts: int = 0


@dataclass
class EnhanceStats:
    """Counts that asset metadata shows."""

    items_by_type: Counter = field(default_factory=Counter)
    backend_calls: int = 0  # items handed to the backend (each enhancer attempt counts)
    requests_sent: int = 0  # requests the backend sent (HTTP retries included)
    cache_hits: int = 0
    cache_damaged: int = 0
    generated: int = 0
    failures: int = 0
    failure_reasons: Counter = field(default_factory=Counter)
    seconds: float = 0.0

    @property
    def items(self) -> int:
        return sum(self.items_by_type.values())

    def add(self, part: EnhanceStats) -> EnhanceStats:
        """Add another run's stats to these (counts, counters and seconds summed)."""
        for f in fields(EnhanceStats):
            setattr(self, f.name, getattr(self, f.name) + getattr(part, f.name))
        return self

    def as_metadata(self) -> dict[str, Any]:
        return {
            "items": self.items,
            "items_by_type": dict(self.items_by_type),
            "backend_calls": self.backend_calls,
            "requests_sent": self.requests_sent,
            "cache_hits": self.cache_hits,
            "cache_damaged": self.cache_damaged,
            "generated": self.generated,
            "failures": self.failures,
            "failure_reasons": dict(self.failure_reasons.most_common(10)),
            "seconds": round(self.seconds, 2),
            "items_per_second": round(self.items / self.seconds, 2) if self.seconds else 0.0,
        }


# ---------------------------------------------------------------------------
# planning


def _image(root: Path, rel: str | None) -> Path | None:
    return resolve_in_root(root, rel) if rel else None


def _plan(
    item_id: str,
    item_type: CandidateType | QueryType,
    txt: str | None,
    img_path: str | None,
    root: Path,
    prompts: Mapping[str, PromptSpec] | None,
) -> WorkItem:
    spec = prompt_for(item_type, prompts)  # the routing table
    if spec is None:
        return WorkItem(item_id, item_type, None, txt, None)
    image = _image(root, img_path) if spec.sends_image else None
    return WorkItem(item_id, item_type, spec, txt, image)


def plan_candidate(
    candidate: Candidate, root: Path, prompts: Mapping[str, PromptSpec] | None = None
) -> WorkItem:
    """Route a candidate to its prompt among `prompts` (default: the shipped ones).

    Text-only candidates pass through.
    """
    kind = classify_candidate(candidate)
    return _plan(candidate.did, kind, candidate.txt, candidate.img_path, root, prompts)


def plan_query(
    query: Query,
    root: Path,
    override: QueryType | str | None = None,
    prompts: Mapping[str, PromptSpec] | None = None,
) -> WorkItem:
    """Route a query to its prompt; prompts that do not send images (modification) get none."""
    kind = classify_query(query, override)
    return _plan(query.key, kind, query.txt, query.img_path, root, prompts)


def build_request(item: WorkItem, options: EnhanceOptions = DEFAULT_OPTIONS) -> VLMRequest:
    """The VLM request for a planned item."""
    spec = item.spec
    if spec is None:
        raise ValueError(f"{item.item_id} passes through; it has no request")
    return spec.request(
        item.txt, item.image_path, temperature=options.temperature, seed=options.seed
    )


# ---------------------------------------------------------------------------
# the run


class _ImageHashes:
    def __init__(self) -> None:
        self._by_path: dict[Path, str] = {}

    def __call__(self, path: Path | None) -> str | None:
        if path is None:
            return None
        if path not in self._by_path:
            self._by_path[path] = file_hash(path)
        return self._by_path[path]


def run_enhancement(
    items: Sequence[WorkItem],
    vlm: VLM,
    cache: EnhancementCache,
    options: EnhanceOptions = DEFAULT_OPTIONS,
    *,
    progress: Callable[[int], None] | None = None,
) -> tuple[dict[str, ItemOutput], EnhanceStats]:
    """Enhance items: cache hits first, then the VLM in batches, retrying failures.

    Args:
        items: planned items (pass-through ones included, for the counts).
        vlm: the backend.
        cache: outputs are read from and written to it as work proceeds.
        options: batch size, attempts per item and sampling. An output that breaks the
            prompt's contract is not retried (decoding would repeat it).
        progress: called with the number of items finished, for progress bars.

    Returns:
        Output per item id, and the statistics.

    Raises:
        ValueError: two items share an id (one would silently get the other's output).
    """
    repeated = [i for i, n in Counter(item.item_id for item in items).items() if n > 1]
    if repeated:
        raise ValueError(f"item ids must be unique in a run; repeated: {repeated[:5]}")
    started = time.perf_counter()
    run = _Run(vlm, cache, options, progress)
    damaged_before = cache.store.damaged
    sent_before = getattr(vlm, "requests_sent", None)
    keyed = run.keyed(items)
    cache.prefetch(key for _, key, _ in keyed)  # one filtered read for the whole partition
    run.generate(run.uncached(keyed))
    cache.flush()
    stats = run.stats
    stats.cache_damaged = cache.store.damaged - damaged_before
    # What went over the wire (HTTP retries included) where the backend counts it;
    # otherwise one request per item handed over.
    sent_after = getattr(vlm, "requests_sent", None)
    stats.requests_sent = (
        sent_after - sent_before if sent_before is not None else stats.backend_calls
    )
    stats.seconds = time.perf_counter() - started
    return run.outputs, stats


_Keyed = tuple[WorkItem, str, VLMRequest]  # an item to generate for, its cache key, request


@dataclass
class _Run:
    """The steps of one `run_enhancement`: what is settled so far and what it counted."""

    vlm: VLM
    cache: EnhancementCache
    options: EnhanceOptions
    progress: Callable[[int], None] | None
    stats: EnhanceStats = field(default_factory=EnhanceStats)
    outputs: dict[str, ItemOutput] = field(default_factory=dict)

    def settled(self, output: ItemOutput) -> None:
        self.outputs[output.item_id] = output
        if self.progress:
            self.progress(1)

    def keyed(self, items: Sequence[WorkItem]) -> list[_Keyed]:
        """Count items; settle pass-through ones and unreadable images; key the others."""
        hashes = _ImageHashes()
        backend, model_id = self.vlm.backend, self.vlm.model_id
        keyed: list[_Keyed] = []
        for item in items:
            self.stats.items_by_type[item.item_type.value] += 1
            if item.spec is None:
                self.settled(ItemOutput(item.item_id, item.item_type, None, "passthrough"))
                continue
            request = build_request(item, self.options)
            try:
                image_hash = hashes(request.image_path)
            except OSError as exc:
                self.settled(_fail(item, f"image unreadable: {exc}", 0, self.stats))
                continue
            key = cache_key(
                content_hash(item.txt, image_hash),
                item.spec,
                backend,
                model_id,
                request.sampling,
            )
            keyed.append((item, key, request))
        return keyed

    def uncached(self, keyed: list[_Keyed]) -> list[_Keyed]:
        """Settle the items the cache holds; the others, still to generate."""
        pending: list[_Keyed] = []
        for item, key, request in keyed:
            hit = self.cache.get(key)
            if hit is not None:
                self.stats.cache_hits += 1
                self.settled(ItemOutput(item.item_id, item.item_type, hit.generated, "cached"))
                continue
            pending.append((item, key, request))
        return pending

    def generate(self, pending: list[_Keyed]) -> None:
        """The VLM in batches; items it fails retry in later rounds, up to max_attempts."""
        attempts: Counter = Counter()
        while pending:
            retry: list[_Keyed] = []
            for start in range(0, len(pending), self.options.batch_size):
                batch = pending[start : start + self.options.batch_size]
                results = self.results([r for _, _, r in batch])
                for (item, key, request), result in zip(batch, results, strict=True):
                    attempts[item.item_id] += 1
                    done = _settle(
                        item,
                        key,
                        result,
                        attempts[item.item_id],
                        self.options.max_attempts,
                        self.vlm,
                        self.cache,
                        self.stats,
                    )
                    if done is None:
                        retry.append((item, key, request))
                    else:
                        self.settled(done)
            pending = retry

    def results(self, requests: list[VLMRequest]) -> list[VLMResult]:
        """One batch's results; a whole-batch failure is every item's (each may retry)."""
        self.stats.backend_calls += len(requests)
        try:
            results = self.vlm.generate(requests)
            if len(results) != len(requests):
                raise RuntimeError(
                    f"backend returned {len(results)} results for {len(requests)} requests"
                )
        except Exception as exc:
            return results_for_batch_error(requests, exc)
        return results


def _fail(item: WorkItem, reason: str, attempts: int, stats: EnhanceStats) -> ItemOutput:
    stats.failures += 1
    stats.failure_reasons[reason.split(":")[0][:80]] += 1
    return ItemOutput(item.item_id, item.item_type, None, "failed", reason, attempts)


def _settle(
    item: WorkItem,
    key: str,
    result: VLMResult,
    attempt: int,
    max_attempts: int,
    vlm: VLM,
    cache: EnhancementCache,
    stats: EnhanceStats,
) -> ItemOutput | None:
    """The item's final output, or None to retry it."""
    assert item.spec is not None
    if result.error is None and result.text is not None and result.text.strip():
        text, violation = check_output(item.spec, item.item_type, item.txt, result.text)
        if violation is None:
            cache.put(key, _entry(item, text, "ok", None, attempt, vlm))
            stats.generated += 1
            return ItemOutput(item.item_id, item.item_type, text, "generated", None, attempt)
        reason = f"contract: {violation}"
    else:
        reason = result.error or "empty output"
        if result.retryable and attempt < max_attempts:
            return None
        if result.retryable:
            reason = f"{reason} (after {attempt} attempts)"
    cache.put(key, _entry(item, None, "failed", reason, attempt, vlm))
    return _fail(item, reason, attempt, stats)


def _entry(
    item: WorkItem, text: str | None, status: str, error: str | None, attempts: int, vlm: VLM
) -> CacheEntry:
    assert item.spec is not None
    return CacheEntry(
        generated=text,
        status=status,
        error=error,
        prompt=item.spec.name,
        prompt_version=item.spec.version,
        backend=vlm.backend,
        model_id=vlm.model_id,
        attempts=attempts,
    )
