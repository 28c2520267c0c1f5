"""Enhancement assets: offline captioner memory, corpus captions, enhanced corpus, queries.

Code versions are derived from the prompts each asset uses plus the backend, model and
sampling settings (`VLMResource.version_fields`): edit the corpus caption prompt and exactly
`corpus_captions` (and, through it, `enhanced_corpus`) turn stale, while `enhanced_queries`
stays fresh. The cache then recomputes only the items whose key changed.
"""

import hashlib
import json
import time
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
from tqdm.auto import tqdm

from rar_pipeline.core.corpus.ingest import ArtifactLayout
from rar_pipeline.core.corpus.records import Candidate, Query
from rar_pipeline.core.corpus.tables import frame_to_records, write_parquet
from rar_pipeline.core.demo.builder import caption_accuracy, truth_file_for
from rar_pipeline.core.enhance.cache import EnhancementCache
from rar_pipeline.core.enhance.classify import QueryType, classify_candidate
from rar_pipeline.core.enhance.engine import (
    EnhanceStats,
    ItemOutput,
    WorkItem,
    candidate_text,
    plan_candidate,
    plan_query,
    query_text,
    run_enhancement,
)
from rar_pipeline.core.enhance.guard import apply_guard
from rar_pipeline.core.enhance.prompts import (
    CORPUS_PROMPTS,
    QUERY_PROMPTS,
    VISUAL_CONTEXT_TEMPLATE,
    versions_of,
)
from rar_pipeline.core.enhance.vlm.base import VLM
from rar_pipeline.core.enhance.vlm.offline import (
    OFFLINE_VERSION,
    CaptionMemory,
    Perceiver,
    train_pairs,
)
from rar_pipeline.defs.assets.corpus import candidate_pool, queries
from rar_pipeline.defs.checks import failure_rate_result, failure_rate_spec
from rar_pipeline.defs.partitions import pool_shards, query_tasks
from rar_pipeline.defs.resources import CorpusResource, VLMResource

GROUP = "enhancement"


def code_versions(vlm: VLMResource) -> dict[str, str]:
    """Each enhancement asset's code version under a VLM configuration."""
    fields = vlm.version_fields()
    overrides = json.dumps(vlm.query_type_overrides, sort_keys=True)
    return {
        "offline_captioner": OFFLINE_VERSION,
        "corpus_captions": versions_of(CORPUS_PROMPTS, *fields),
        # The merge step "uses" the caption prompt through its input: including it makes a
        # prompt edit mark enhanced_corpus stale at once (Dagster propagates code-version
        # staleness to descendants only after the upstream is rematerialized).
        "enhanced_corpus": versions_of(
            CORPUS_PROMPTS, *fields, VISUAL_CONTEXT_TEMPLATE, f"guard={vlm.policy()}"
        ),
        "enhanced_queries": versions_of(
            QUERY_PROMPTS, *fields, f"overrides={overrides}", f"guard={vlm.policy()}"
        ),
    }


def _artifacts(corpus: CorpusResource) -> ArtifactLayout:
    return corpus.artifacts()


def _cache(artifacts: ArtifactLayout) -> EnhancementCache:
    return EnhancementCache(artifacts.root / "cache" / "enhancements")


def _read(path: Path, what: str) -> pd.DataFrame:
    if not path.is_file():
        raise dg.Failure(f"{path} does not exist: materialize {what} first")
    return pd.read_parquet(path)


def _samples(rows: list[tuple[str, Any, Any]], n: int = 5) -> dg.MetadataValue:
    lines = ["| id | before | after |", "|---|---|---|"]
    for item_id, before, after in rows[:n]:

        def cell(v: Any) -> str:
            return str(v if v is not None else "").replace("|", "/").replace("\n", " ⏎ ")[:200]

        lines.append(f"| {item_id} | {cell(before)} | {cell(after)} |")
    return dg.MetadataValue.md("\n".join(lines))


def _data_version(frame: pd.DataFrame, column: str) -> dg.DataVersion:
    """A hash of what downstream consumes: unchanged outputs leave descendants fresh."""
    digest = hashlib.sha256()
    for value in frame[column].tolist():
        digest.update(str(value).encode())
        digest.update(b"\0")
    return dg.DataVersion(digest.hexdigest()[:16])


def _failure_check(stats: EnhanceStats, vlm: VLMResource) -> dg.AssetCheckResult:
    attempted = stats.items - stats.items_by_type.get("text", 0)
    return failure_rate_result(stats.failures, attempted, vlm.max_failure_rate)


def _enhance(
    items: list[WorkItem], vlm: VLMResource, artifacts: ArtifactLayout, desc: str
) -> tuple[VLM, dict[str, ItemOutput], EnhanceStats]:
    """Run the configured backend over the items through the shared cache, with a bar."""
    backend = vlm.create(artifacts.root)
    with tqdm(
        total=len(items), desc=desc, unit=" items", disable=None, mininterval=1.0, leave=False
    ) as bar:
        outputs, stats = run_enhancement(
            items,
            backend,
            _cache(artifacts),
            batch_size=vlm.batch_size,
            max_attempts=vlm.max_attempts,
            temperature=vlm.temperature,
            seed=vlm.seed,
            progress=bar.update,
        )
    return backend, outputs, stats


def build_enhancement_assets(vlm: VLMResource) -> list[dg.AssetsDefinition]:
    """The enhancement assets for a VLM configuration (it fixes their code versions)."""
    versions = code_versions(vlm)
    offline = vlm.backend == "offline"
    assets: list[dg.AssetsDefinition] = []
    captioner_deps: list[Any] = []

    if offline:

        @dg.asset(
            group_name=GROUP,
            code_version=versions["offline_captioner"],
            deps=[
                dg.AssetDep(queries, partition_mapping=dg.AllPartitionMapping()),
                dg.AssetDep(candidate_pool, partition_mapping=dg.AllPartitionMapping()),
            ],
            kinds={"python", "safetensors"},
        )
        def offline_captioner(
            context: dg.AssetExecutionContext, corpus: CorpusResource
        ) -> dg.MaterializeResult:
            """The offline enhancer's caption memory, fitted on train-split pairs only."""
            started = time.perf_counter()
            artifacts = _artifacts(corpus)
            layout = corpus.layout()
            candidates: dict[str, Candidate] = {}
            for shard in layout.pools:
                frame = _read(artifacts.pool(shard), f"candidate_pool[{shard}]")
                candidates.update({c.did: c for c in frame_to_records(frame, Candidate)})
            # Learn from every query task ingested so far (a run may ingest a subset).
            tasks = [t for t in layout.queries if artifacts.queries(t).is_file()]
            if not tasks:
                raise dg.Failure("no query task has been materialized: run queries first")
            skipped = sorted(set(layout.queries) - set(tasks))
            if skipped:
                context.log.warning(f"learning without un-ingested tasks: {skipped}")
            train: list[Query] = []
            for task in tasks:
                frame = pd.read_parquet(artifacts.queries(task))
                train += frame_to_records(frame[frame["split"] == "train"], Query)
            pairs = train_pairs(train, candidates, layout.root)
            memory = CaptionMemory.fit(pairs, Perceiver(artifacts.root / "cache" / "perception"))
            target = artifacts.root / "offline_captioner"
            memory.save(target)
            context.log.info(f"caption memory: {len(memory)} pairs from {len(train)} queries")
            return dg.MaterializeResult(
                metadata={
                    "pairs": len(memory),
                    "train_queries": len(train),
                    "tasks_used": tasks,
                    "distinct_images": len({str(p) for p, _ in pairs}),
                    "fingerprint": memory.fingerprint,
                    "path": dg.MetadataValue.path(str(target)),
                    "seconds": round(time.perf_counter() - started, 2),
                },
                data_version=dg.DataVersion(memory.fingerprint),
            )

        assets.append(offline_captioner)
        captioner_deps.append(offline_captioner)

    @dg.asset(
        partitions_def=pool_shards,
        group_name=GROUP,
        code_version=versions["corpus_captions"],
        deps=[candidate_pool, *captioner_deps],
        check_specs=[failure_rate_spec("corpus_captions")],
        kinds={"parquet"},
    )
    def corpus_captions(
        context: dg.AssetExecutionContext, corpus: CorpusResource, vlm: VLMResource
    ) -> dg.MaterializeResult:
        """Dense captions of the shard's image and image+text candidates (cached)."""
        shard = context.partition_key
        artifacts = _artifacts(corpus)
        layout = corpus.layout()
        cands = frame_to_records(
            _read(artifacts.pool(shard), f"candidate_pool[{shard}]"), Candidate
        )
        items = [plan_candidate(c, layout.root) for c in cands]
        backend, outputs, stats = _enhance(items, vlm, artifacts, f"captions {shard}")
        rows = [
            {
                "did": c.did,
                "item_type": outputs[c.did].item_type,
                "caption": outputs[c.did].text,
                "status": outputs[c.did].status,
                "error": outputs[c.did].error,
            }
            for c in cands
        ]
        frame = pd.DataFrame(rows, columns=["did", "item_type", "caption", "status", "error"])
        path = write_parquet(frame, artifacts.root / "corpus_captions" / f"{shard}.parquet")
        metadata: dict[str, Any] = {
            **stats.as_metadata(),
            "backend": backend.backend,
            "model_id": backend.model_id,
            "path": dg.MetadataValue.path(str(path)),
            "samples": _samples(
                [(c.did, c.img_path, outputs[c.did].text) for c in cands if outputs[c.did].text][:5]
            ),
        }
        truth = truth_file_for(layout.root)
        if truth.is_file():  # the demo: score captions against ground truth, after the fact
            by_path = {
                c.img_path: outputs[c.did].text for c in cands if c.img_path and outputs[c.did].text
            }
            accuracy = caption_accuracy(by_path, truth)
            if accuracy["n"]:
                metadata.update({f"caption_accuracy_{k}": v for k, v in accuracy.items()})
        if stats.failures:
            context.log.warning(f"{stats.failures} captions failed: {dict(stats.failure_reasons)}")
        return dg.MaterializeResult(
            metadata=metadata,
            data_version=_data_version(frame, "caption"),
            check_results=[_failure_check(stats, vlm)],
        )

    @dg.asset(
        partitions_def=pool_shards,
        group_name=GROUP,
        code_version=versions["enhanced_corpus"],
        deps=[candidate_pool, corpus_captions],
        kinds={"parquet"},
    )
    def enhanced_corpus(
        context: dg.AssetExecutionContext, corpus: CorpusResource, vlm: VLMResource
    ) -> dg.MaterializeResult:
        """Candidates as the retriever embeds them: text, caption, or text + Visual Context."""
        shard = context.partition_key
        artifacts = _artifacts(corpus)
        cands = frame_to_records(
            _read(artifacts.pool(shard), f"candidate_pool[{shard}]"), Candidate
        )
        captions = (
            _read(
                artifacts.root / "corpus_captions" / f"{shard}.parquet", f"corpus_captions[{shard}]"
            )
            .set_index("did")["caption"]
            .to_dict()
        )
        policy = vlm.policy()
        rows, flagged, dropped, samples = [], 0, 0, []
        types: dict[str, int] = {}
        for c in cands:
            caption = captions.get(c.did)
            caption = caption if isinstance(caption, str) else None  # a null reads back as NaN
            kind = classify_candidate(c).value
            types[kind] = types.get(kind, 0) + 1
            guard_flags: tuple[str, ...] = ()
            if caption and c.txt:
                result = apply_guard(caption, c.txt, policy)
                caption, guard_flags = result.text, result.flagged
                flagged += bool(guard_flags)
                dropped += result.dropped
            text = candidate_text(c, caption)
            rows.append(
                {
                    "did": c.did,
                    "modality": c.modality.value,
                    "item_type": kind,
                    "txt": c.txt,
                    "img_path": c.img_path,
                    "enhanced_txt": text,
                    "guard_flagged": list(guard_flags),
                }
            )
            if kind != "text" and len(samples) < 5:
                samples.append((c.did, c.txt or c.img_path, text))
        frame = pd.DataFrame(rows)
        path = write_parquet(frame, artifacts.root / "enhanced_corpus" / f"{shard}.parquet")
        return dg.MaterializeResult(
            metadata={
                "dagster/row_count": len(rows),
                "items_by_type": types,
                "without_enhanced_text": sum(1 for r in rows if not r["enhanced_txt"]),
                "guard_policy": policy.value,
                "guard_flagged": flagged,
                "guard_dropped": dropped,
                "path": dg.MetadataValue.path(str(path)),
                "samples": _samples(samples),
            },
            data_version=_data_version(frame, "enhanced_txt"),
        )

    @dg.asset(
        partitions_def=query_tasks,
        group_name=GROUP,
        code_version=versions["enhanced_queries"],
        deps=[queries, *captioner_deps],
        check_specs=[failure_rate_spec("enhanced_queries")],
        kinds={"parquet"},
    )
    def enhanced_queries(
        context: dg.AssetExecutionContext, corpus: CorpusResource, vlm: VLMResource
    ) -> dg.MaterializeResult:
        """Queries as the retriever embeds them: caption, QA rewrite or distilled constraints."""
        task = context.partition_key
        artifacts = _artifacts(corpus)
        layout = corpus.layout()
        qs = frame_to_records(_read(artifacts.queries(task), f"queries[{task}]"), Query)
        override = vlm.query_type_overrides.get(task)
        items = [plan_query(q, layout.root, override) for q in qs]
        backend, outputs, stats = _enhance(items, vlm, artifacts, f"queries {task}")
        policy = vlm.policy()
        rows, flagged, samples = [], 0, []
        for q, item in zip(qs, items, strict=True):
            out = outputs[q.qid]
            generated, flags = out.text, ()
            if generated and item.item_type == QueryType.QA.value:
                result = apply_guard(generated, q.txt, policy)
                generated, flags = result.text, result.flagged
                flagged += bool(flags)
            text = query_text(q, item.item_type, generated)
            rows.append(
                {
                    "qid": q.qid,
                    "split": q.split,
                    "task_id": q.task_id,
                    "query_type": item.item_type,
                    "modality": q.modality.value,
                    "txt": q.txt,
                    "img_path": q.img_path,
                    "pos_cand_list": list(q.pos_cand_list),
                    "enhanced_txt": text,
                    "status": out.status,
                    "error": out.error,
                    "guard_flagged": list(flags),
                }
            )
            if item.item_type != "text" and len(samples) < 5:
                samples.append((q.qid, q.txt or q.img_path, text))
        frame = pd.DataFrame(rows)
        path = write_parquet(frame, artifacts.root / "enhanced_queries" / f"{task}.parquet")
        if stats.failures:
            context.log.warning(f"{stats.failures} queries failed: {dict(stats.failure_reasons)}")
        return dg.MaterializeResult(
            metadata={
                **stats.as_metadata(),
                "dagster/row_count": len(rows),
                "backend": backend.backend,
                "model_id": backend.model_id,
                "query_type_override": override or "",
                "guard_policy": policy.value,
                "guard_flagged": flagged,
                "path": dg.MetadataValue.path(str(path)),
                "samples": _samples(samples),
            },
            data_version=_data_version(frame, "enhanced_txt"),
            check_results=[_failure_check(stats, vlm)],
        )

    return [*assets, corpus_captions, enhanced_corpus, enhanced_queries]
