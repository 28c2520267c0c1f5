"""The enhancement engine: routing, caps, merging, a durable cache, retries and failures.

Runs the scripted `FakeVLM` over real records whose images exist, with a real
`EnhancementCache` on disk.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image

from rar_pipeline.core.corpus.records import Candidate, Modality, Query
from rar_pipeline.core.enhance.cache import EnhancementCache
from rar_pipeline.core.enhance.classify import QueryType, classify_candidate, classify_query
from rar_pipeline.core.enhance.engine import (
    EnhanceOptions,
    WorkItem,
    build_request,
    plan_candidate,
    plan_query,
    run_enhancement,
)
from rar_pipeline.core.enhance.merge import candidate_text, query_text
from rar_pipeline.core.enhance.prompts import (
    CORPUS_CAPTION,
    MODIFICATION,
    QA_REWRITE,
    QUERY_CAPTION,
    PromptSpec,
)
from rar_pipeline.core.enhance.vlm.base import VLMRequest, VLMResult
from tests.fake_vlm import FakeVLM

QUESTION = "who makes this?"
INSTRUCTION = "same one but in red"


def _png(root: Path, name: str, colour: tuple[int, int, int]) -> str:
    path = root / "images" / name
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (24, 24), colour).save(path)
    return f"images/{name}"


@dataclass
class Corpus:
    """A tiny corpus with one item of every candidate and query type, images on disk."""

    root: Path
    candidates: dict[str, Candidate]
    queries: dict[str, Query]

    def items(self, corpus_spec: PromptSpec | None = None) -> list[WorkItem]:
        planned = [plan_candidate(c, self.root) for c in self.candidates.values()]
        planned += [plan_query(q, self.root) for q in self.queries.values()]
        if corpus_spec is not None:
            planned = [
                dataclasses.replace(w, spec=corpus_spec) if w.spec is CORPUS_CAPTION else w
                for w in planned
            ]
        return planned

    def image(self, item_id: str) -> Path:
        record = self.candidates.get(item_id) or self.queries[item_id]
        assert record.img_path is not None
        return self.root / record.img_path


# ids of the items a VLM sees, and of those that pass through
VLM_ITEMS = {"c-img", "c-imgtxt", "test/q-img", "test/q-qa", "test/q-mod"}
TEXT_ITEMS = {"c-text", "test/q-text"}


@pytest.fixture
def corpus(tmp_path: Path) -> Corpus:
    root = tmp_path / "data"
    candidates = [
        Candidate("c-text", Modality.TEXT, "Quorble opened in 1962.", None),
        Candidate("c-img", Modality.IMAGE, None, _png(root, "photo1.png", (200, 20, 20))),
        Candidate(
            "c-imgtxt",
            Modality.IMAGE_TEXT,
            "Listing 1001. Price $9.99, in stock.",
            _png(root, "listing1.png", (20, 200, 20)),
        ),
    ]
    queries = [
        Query("q-text", Modality.TEXT, "Which brand opened in 1962?", None, ("c-text",)),
        Query("q-img", Modality.IMAGE, None, _png(root, "query1.png", (20, 20, 200)), ("c-img",)),
        Query(
            "q-qa",
            Modality.IMAGE_TEXT,
            QUESTION,
            _png(root, "query2.png", (200, 200, 20)),
            ("c-text",),
        ),
        Query(
            "q-mod",
            Modality.IMAGE_TEXT,
            INSTRUCTION,
            _png(root, "query3.png", (20, 200, 200)),
            ("c-img",),
        ),
    ]
    return Corpus(root, {c.did: c for c in candidates}, {q.qid: q for q in queries})


def _run(items, vlm, cache_dir: Path, progress=None, **options):
    return run_enhancement(
        items, vlm, EnhancementCache(cache_dir), EnhanceOptions(**options), progress=progress
    )


def _candidate_text(candidate: Candidate, caption: str | None) -> str | None:
    return candidate_text(classify_candidate(candidate), candidate.txt, caption)


def _requests_for(fake: FakeVLM, corpus: Corpus, item_id: str) -> list[VLMRequest]:
    """Requests the fake received for one item (matched on its image or its text)."""
    record = corpus.candidates.get(item_id) or corpus.queries[item_id]
    out = []
    for r in fake.requests:
        if record.img_path and r.image_path == corpus.root / record.img_path:
            out.append(r)
        elif r.image_path is None and r.item_text == record.txt:
            out.append(r)
    return out


# ---------------------------------------------------------------------------
# routing


def test_planning_routes_each_type_to_its_prompt(corpus: Corpus):
    planned = {w.item_id: w for w in corpus.items()}
    assert planned["c-text"].spec is None and planned["test/q-text"].spec is None
    assert planned["c-img"].spec is CORPUS_CAPTION
    assert planned["c-imgtxt"].spec is CORPUS_CAPTION
    assert planned["test/q-img"].spec is QUERY_CAPTION
    assert planned["test/q-qa"].spec is QA_REWRITE
    assert planned["test/q-mod"].spec is MODIFICATION
    assert planned["c-imgtxt"].image_path == corpus.image("c-imgtxt")
    assert planned["test/q-qa"].image_path == corpus.image("q-qa")
    assert planned["test/q-mod"].image_path is None  # the image is never sent for modification


def test_a_modification_request_never_carries_an_image_even_if_one_is_planned(corpus: Corpus):
    image = corpus.image("q-mod")
    item = WorkItem("q-mod", QueryType.MODIFICATION, MODIFICATION, INSTRUCTION, image)
    request = build_request(item)
    assert request.image_path is None
    assert request.prompt == "modification" and request.max_words == MODIFICATION.max_words
    qa = build_request(WorkItem("q-qa", QueryType.QA, QA_REWRITE, QUESTION, corpus.image("q-qa")))
    assert qa.image_path == corpus.image("q-qa")


def test_pass_through_items_have_no_request(corpus: Corpus):
    text_item = plan_candidate(corpus.candidates["c-text"], corpus.root)
    with pytest.raises(ValueError):
        build_request(text_item)


def test_text_only_items_are_never_sent_to_the_vlm(corpus: Corpus, tmp_path: Path):
    fake = FakeVLM()
    outputs, stats = _run(corpus.items(), fake, tmp_path / "cache")
    assert len(fake.requests) == len(VLM_ITEMS)
    sent_texts = {r.item_text for r in fake.requests}
    assert corpus.candidates["c-text"].txt not in sent_texts
    assert corpus.queries["q-text"].txt not in sent_texts
    for item_id in TEXT_ITEMS:
        assert outputs[item_id].status == "passthrough"
    assert _candidate_text(corpus.candidates["c-text"], None) == "Quorble opened in 1962."
    assert query_text(QueryType.TEXT, corpus.queries["q-text"].txt, None) == (
        "Which brand opened in 1962?"
    )
    assert stats.items == len(VLM_ITEMS) + len(TEXT_ITEMS)
    assert stats.generated == len(VLM_ITEMS) and stats.failures == 0


def test_requests_use_each_prompt_and_only_modification_goes_without_the_image(
    corpus: Corpus, tmp_path: Path
):
    fake = FakeVLM()
    _run(corpus.items(), fake, tmp_path / "cache")
    by_prompt = {r.prompt: r for r in fake.requests}
    assert sorted(r.prompt for r in fake.requests) == sorted(
        ["corpus_caption", "corpus_caption", "query_caption", "qa_rewrite", "modification"]
    )
    mod = by_prompt["modification"]
    assert mod.image_path is None
    assert mod.system == MODIFICATION.system
    assert INSTRUCTION in mod.user and mod.item_text == INSTRUCTION
    assert by_prompt["qa_rewrite"].image_path == corpus.image("q-qa")
    assert by_prompt["query_caption"].image_path == corpus.image("q-img")
    assert by_prompt["query_caption"].sampling.max_tokens == 128
    for r in fake.requests:
        if r.prompt == "corpus_caption":
            assert r.image_path is not None and r.image_path.is_file()
            assert r.sampling.max_tokens == 512


def test_image_text_candidate_keeps_its_text_and_gains_visual_context(
    corpus: Corpus, tmp_path: Path
):
    outputs, _ = _run(corpus.items(), FakeVLM(), tmp_path / "cache")
    caption = outputs["c-imgtxt"].generated
    assert caption and caption.startswith("A picture of listing1.")
    listing = corpus.candidates["c-imgtxt"]
    assert _candidate_text(listing, caption) == (
        f"Listing 1001. Price $9.99, in stock.\nVisual Context: {caption}"
    )
    # image-only: the caption replaces the missing text
    assert _candidate_text(corpus.candidates["c-img"], outputs["c-img"].generated) == (
        outputs["c-img"].generated
    )


def test_failed_captions_fall_back_to_what_the_item_has(corpus: Corpus):
    assert _candidate_text(corpus.candidates["c-imgtxt"], None) == (
        "Listing 1001. Price $9.99, in stock."
    )
    assert _candidate_text(corpus.candidates["c-img"], None) is None


def test_captions_are_capped_at_the_prompts_word_cap(corpus: Corpus, tmp_path: Path):
    fake = FakeVLM()
    outputs, _ = _run(corpus.items(), fake, tmp_path / "cache")
    assert all(r.max_words for r in fake.requests)
    assert len(outputs["c-img"].generated.split()) == CORPUS_CAPTION.max_words == 100
    assert len(outputs["c-imgtxt"].generated.split()) == 100
    assert len(outputs["test/q-img"].generated.split()) == QUERY_CAPTION.max_words == 50
    assert query_text("image", corpus.queries["q-img"].txt, outputs["test/q-img"].generated) == (
        outputs["test/q-img"].generated
    )


def test_rewrites_become_the_query_text(corpus: Corpus, tmp_path: Path):
    outputs, _ = _run(corpus.items(), FakeVLM(), tmp_path / "cache")
    qa = corpus.queries["q-qa"]
    rewritten = query_text(classify_query(qa), qa.txt, outputs["test/q-qa"].generated)
    assert rewritten == "who makes this (seen in query2)?"
    mod = corpus.queries["q-mod"]
    assert query_text(classify_query(mod), mod.txt, outputs["test/q-mod"].generated) == "but in red"


# ---------------------------------------------------------------------------
# the durable cache


def test_a_second_run_makes_no_backend_calls(corpus: Corpus, tmp_path: Path):
    first, _ = _run(corpus.items(), FakeVLM(), tmp_path / "cache")
    fake = FakeVLM()
    second, stats = _run(corpus.items(), fake, tmp_path / "cache")  # a new cache instance
    assert stats.backend_calls == 0 and fake.requests == []
    assert stats.cache_hits == len(VLM_ITEMS)
    assert stats.generated == 0 and stats.failures == 0
    for item_id in VLM_ITEMS:
        assert second[item_id].status == "cached"
        assert second[item_id].generated == first[item_id].generated


class _KilledAfter(FakeVLM):
    """A backend whose worker dies (KeyboardInterrupt) on its n-th batch."""

    def __init__(self, batches: int) -> None:
        super().__init__()
        self.batches = batches

    def generate(self, requests):
        if self.batches == 0:
            raise KeyboardInterrupt
        self.batches -= 1
        return super().generate(requests)


def test_a_run_killed_mid_partition_resumes_where_it_stopped(corpus: Corpus, tmp_path: Path):
    items = corpus.items()
    cache_dir = tmp_path / "cache"
    with pytest.raises(KeyboardInterrupt):
        run_enhancement(
            items,
            _KilledAfter(batches=2),
            EnhancementCache(cache_dir, flush_every=1),
            EnhanceOptions(batch_size=1),
        )
    resumed = FakeVLM()
    outputs, stats = run_enhancement(
        items, resumed, EnhancementCache(cache_dir), EnhanceOptions(batch_size=1)
    )
    assert stats.cache_hits == 2  # the two batches finished before the kill
    assert stats.backend_calls == len(VLM_ITEMS) - 2
    assert all(outputs[i].status in ("cached", "generated") for i in VLM_ITEMS)


def test_a_moved_item_with_the_same_content_is_a_cache_hit(corpus: Corpus, tmp_path: Path):
    _run(corpus.items(), FakeVLM(), tmp_path / "cache")
    original = corpus.candidates["c-img"]
    moved_path = corpus.root / "moved" / "elsewhere.png"
    moved_path.parent.mkdir()
    moved_path.write_bytes((corpus.root / original.img_path).read_bytes())
    moved = dataclasses.replace(original, did="c-img-2", img_path="moved/elsewhere.png")
    fake = FakeVLM()
    outputs, stats = _run([plan_candidate(moved, corpus.root)], fake, tmp_path / "cache")
    assert stats.cache_hits == 1 and fake.requests == []
    assert outputs["c-img-2"].status == "cached"


def test_a_changed_image_is_recomputed(corpus: Corpus, tmp_path: Path):
    _run(corpus.items(), FakeVLM(), tmp_path / "cache")
    Image.new("RGB", (24, 24), (1, 2, 3)).save(corpus.image("c-img"))
    fake = FakeVLM()
    _, stats = _run(corpus.items(), fake, tmp_path / "cache")
    assert stats.backend_calls == 1 and stats.cache_hits == len(VLM_ITEMS) - 1
    assert [r.image_path for r in fake.requests] == [corpus.image("c-img")]


def test_changing_the_corpus_prompt_recomputes_exactly_the_corpus_items(
    corpus: Corpus, tmp_path: Path
):
    _run(corpus.items(), FakeVLM(), tmp_path / "cache")
    edited = dataclasses.replace(CORPUS_CAPTION, system=CORPUS_CAPTION.system + " Be precise.")
    fake = FakeVLM()
    outputs, stats = _run(corpus.items(edited), fake, tmp_path / "cache")
    corpus_vlm_items = {"c-img", "c-imgtxt"}
    assert stats.backend_calls == len(corpus_vlm_items)
    assert {r.prompt for r in fake.requests} == {"corpus_caption"}
    assert all(r.system == edited.system for r in fake.requests)
    assert stats.cache_hits == len(VLM_ITEMS - corpus_vlm_items)
    for item_id in VLM_ITEMS - corpus_vlm_items:
        assert outputs[item_id].status == "cached"
    for item_id in corpus_vlm_items:
        assert outputs[item_id].status == "generated"
    # and the edited prompt's outputs are cached in turn
    _, again = _run(corpus.items(edited), FakeVLM(), tmp_path / "cache")
    assert again.backend_calls == 0 and again.cache_hits == len(VLM_ITEMS)


def test_a_different_model_is_not_served_another_models_outputs(corpus: Corpus, tmp_path: Path):
    _run(corpus.items(), FakeVLM(model_id="model-a"), tmp_path / "cache")
    _, stats = _run(corpus.items(), FakeVLM(model_id="model-b"), tmp_path / "cache")
    assert stats.cache_hits == 0 and stats.backend_calls == len(VLM_ITEMS)


# ---------------------------------------------------------------------------
# retries and failures


def test_transient_failures_are_retried_until_they_succeed(corpus: Corpus, tmp_path: Path):
    fake = FakeVLM(fail_first={"photo1": 2})
    outputs, stats = _run(corpus.items(), fake, tmp_path / "cache", max_attempts=3)
    assert stats.failures == 0
    assert stats.backend_calls == len(VLM_ITEMS) + 2
    assert outputs["c-img"].status == "generated"
    assert outputs["c-img"].attempts == 3
    assert outputs["c-img"].generated.startswith("A picture of photo1.")
    assert all(outputs[i].status == "generated" for i in VLM_ITEMS)


class _BatchCrash(FakeVLM):
    """Raises for the whole first batch (out of memory, say), then behaves."""

    crashes: int = 1

    def generate(self, requests):
        if self.crashes:
            self.crashes -= 1
            raise RuntimeError("CUDA out of memory")
        return super().generate(requests)


def test_a_whole_batch_failure_is_retried_for_every_item(corpus: Corpus, tmp_path: Path):
    outputs, stats = _run(corpus.items(), _BatchCrash(), tmp_path / "cache", max_attempts=2)
    assert stats.failures == 0
    assert stats.backend_calls == 2 * len(VLM_ITEMS)
    assert all(outputs[i].status == "generated" for i in VLM_ITEMS)


def test_permanent_failures_fail_only_their_item_and_are_retried_next_run(
    corpus: Corpus, tmp_path: Path
):
    fake = FakeVLM(fail_first={"photo1": 1000})
    outputs, stats = _run(corpus.items(), fake, tmp_path / "cache", max_attempts=3)
    failed = outputs["c-img"]
    assert failed.status == "failed" and failed.generated is None
    assert failed.error and "scripted failure" in failed.error and "3 attempts" in failed.error
    assert failed.attempts == 3
    assert stats.failures == 1 and sum(stats.failure_reasons.values()) == 1
    assert stats.backend_calls == len(VLM_ITEMS) + 2
    assert all(outputs[i].status == "generated" for i in VLM_ITEMS - {"c-img"})
    assert all(outputs[i].status == "passthrough" for i in TEXT_ITEMS)

    healed = FakeVLM()
    again, stats2 = _run(corpus.items(), healed, tmp_path / "cache")
    assert stats2.backend_calls == 1 and stats2.cache_hits == len(VLM_ITEMS) - 1
    assert [r.image_path for r in healed.requests] == [corpus.image("c-img")]
    assert again["c-img"].status == "generated" and stats2.failures == 0


def test_an_answer_instead_of_a_rewrite_is_a_contract_failure_without_retries(
    corpus: Corpus, tmp_path: Path
):
    fake = FakeVLM(answer_questions=True)
    outputs, stats = _run(corpus.items(), fake, tmp_path / "cache", max_attempts=3)
    qa = outputs["test/q-qa"]
    assert qa.status == "failed" and qa.generated is None
    assert qa.error and qa.error.startswith("contract")
    assert qa.attempts == 1
    assert [r.prompt for r in fake.requests].count("qa_rewrite") == 1
    assert stats.failures == 1
    # the retriever falls back to the original question, never the answer
    query = corpus.queries["q-qa"]
    assert query_text(classify_query(query), query.txt, qa.generated) == QUESTION
    assert all(outputs[i].status == "generated" for i in VLM_ITEMS - {"test/q-qa"})


def test_a_rewrite_that_adds_too_many_words_is_rejected(corpus: Corpus, tmp_path: Path):
    class Verbose(FakeVLM):
        def _one(self, request: VLMRequest) -> VLMResult:
            if request.prompt == "qa_rewrite":
                return VLMResult("who makes this small shiny yellow square toy with a label?")
            return super()._one(request)

    outputs, _ = _run(corpus.items(), Verbose(), tmp_path / "cache")
    assert outputs["test/q-qa"].status == "failed"
    assert "5 words" in (outputs["test/q-qa"].error or "")


def test_an_unreadable_image_fails_only_its_item(corpus: Corpus, tmp_path: Path):
    items = corpus.items()
    corpus.image("c-img").unlink()
    fake = FakeVLM()
    outputs, stats = _run(items, fake, tmp_path / "cache")
    assert outputs["c-img"].status == "failed"
    assert "image unreadable" in (outputs["c-img"].error or "")
    assert _requests_for(fake, corpus, "c-img") == []
    assert stats.failures == 1 and stats.backend_calls == len(VLM_ITEMS) - 1
    assert all(outputs[i].status == "generated" for i in VLM_ITEMS - {"c-img"})


def test_progress_is_reported_once_per_item(corpus: Corpus, tmp_path: Path):
    items = corpus.items()
    corpus.image("q-img").unlink()  # one item fails before reaching the VLM
    calls: list[int] = []
    fake = FakeVLM(fail_first={"photo1": 1000, "listing1": 1})
    outputs, _ = _run(items, fake, tmp_path / "cache", progress=calls.append)
    assert sum(calls) == len(items) == len(outputs)
    assert calls == [1] * len(items)

    rerun: list[int] = []
    _run(items, FakeVLM(), tmp_path / "cache", progress=rerun.append)  # mostly cached
    assert rerun == [1] * len(items)
