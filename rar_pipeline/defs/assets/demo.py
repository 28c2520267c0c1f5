"""Demo assets: the shapeshop corpus, and how well its photos were captioned.

Only the demo has ground truth, so only `rar demo` materializes `demo_caption_accuracy`;
the production enhancement assets never read it.
"""

import dagster as dg

from rar_pipeline.core import names
from rar_pipeline.core.corpus.mbeir import discover
from rar_pipeline.core.corpus.records import Candidate
from rar_pipeline.core.demo.builder import BUILDER_VERSION, DemoConfig, build_demo_corpus
from rar_pipeline.core.demo.evaluate import caption_accuracy, image_captions
from rar_pipeline.core.layout import demo_truth_file
from rar_pipeline.defs.io import SUMMARY, read_input, read_records
from rar_pipeline.defs.partitions import CorpusPartitions, register_corpus_partitions
from rar_pipeline.defs.resources import CorpusResource
from rar_pipeline.defs.staging import staged
from rar_pipeline.defs.workloads import step_tags


class DemoCorpusConfig(dg.Config):
    """Sizes and seed of the demo corpus (see `core.demo.builder.DemoConfig`)."""

    n_train_products: int = DemoConfig.n_train_products
    n_test_products: int = DemoConfig.n_test_products
    train_queries_per_task: int = DemoConfig.train_queries_per_task
    test_queries_per_task: int = DemoConfig.test_queries_per_task
    holdout_fraction: float = DemoConfig.holdout_fraction
    seed: int = DemoConfig.seed
    force: bool = False


@dg.asset(
    name=names.DEMO_CORPUS,
    op_tags=step_tags(names.DEMO_CORPUS),
    group_name=names.DEMO_GROUP,
    code_version=f"demo-builder-{BUILDER_VERSION}",
    kinds={"python"},
)
@staged
def demo_corpus(
    context: dg.AssetExecutionContext, config: DemoCorpusConfig, corpus: CorpusResource
) -> dg.MaterializeResult:
    """The shapeshop demo corpus in M-BEIR layout, composed from easy-vqa's images."""
    cfg = DemoConfig(**config.model_dump(exclude={"force"}))
    summary = build_demo_corpus(corpus.root, cfg, force=config.force)
    namespace = context.asset_key.path[:-1]  # the corpus' (defs.namespace), if any
    added = register_corpus_partitions(
        context.instance,
        discover(corpus.root),
        CorpusPartitions.in_namespace(namespace[0] if namespace else ""),
    )
    tasks_md = "\n".join(
        f"| {task} | {counts.get('train', 0)} | {counts.get('test', 0)} |"
        for task, counts in summary["tasks"].items()
    )
    return dg.MaterializeResult(
        metadata={
            SUMMARY: f"{summary['products']} products"
            + (", rebuilt" if summary["rebuilt"] else ", already there"),
            "data_root": dg.MetadataValue.path(summary["data_root"]),
            "rebuilt": summary["rebuilt"],
            "products": summary["products"],
            "held_out_combinations": summary["held_out_combinations"],
            "test_products_with_unseen_combination": summary[
                "test_products_with_unseen_combination"
            ],
            "pools": summary["pools"],
            "tasks": dg.MetadataValue.md("| task | train | test |\n|---|---|---|\n" + tasks_md),
            "partitions_added": added,
        },
        data_version=dg.DataVersion(summary["content_hash"]),
    )


@dg.asset(
    name=names.DEMO_CAPTION_ACCURACY,
    op_tags=step_tags(names.DEMO_CAPTION_ACCURACY),
    group_name=names.DEMO_GROUP,
    deps=[dg.AssetDep(names.CORPUS_CAPTIONS, partition_mapping=dg.AllPartitionMapping())],
    kinds={"python"},
)
@staged
def demo_caption_accuracy(corpus: CorpusResource) -> dg.MaterializeResult:
    """Share of the demo's test photos whose captions name the right shape, colour, label."""
    truth = demo_truth_file(corpus.root)
    if not truth.is_file():
        raise dg.Failure(f"{truth} does not exist: this asset scores the demo corpus only")
    paths = corpus.artifacts()
    by_image: dict[str, str] = {}
    shards = [s for s in corpus.layout().pools if paths.captions(s).is_file()]
    for shard in shards:
        cands = read_records(paths.pool(shard), Candidate, f"{names.CANDIDATE_POOL}[{shard}]")
        captions = read_input(paths.captions(shard), f"{names.CORPUS_CAPTIONS}[{shard}]")
        by_image.update(image_captions(cands, captions))
    accuracy = caption_accuracy(by_image, truth)
    return dg.MaterializeResult(
        metadata={
            SUMMARY: f"{accuracy['n']} photos, {accuracy['all']:.0%} right",
            **{f"caption_accuracy_{k}": v for k, v in accuracy.items()},
            "shards_scored": shards,
            "truth_file": dg.MetadataValue.path(str(truth)),
        }
    )
