"""What is indexed and evaluated: the four ablation configs and inference-only.

| name           | retriever (checkpoint) | representations (texts) | aligned |
|----------------|------------------------|-------------------------|---------|
| none           | none                   | none                    | yes     |
| corpus         | corpus                 | corpus                  | yes     |
| query          | query                  | query                   | yes     |
| full           | full                   | full                    | yes     |
| inference-only | none                   | full                    | no      |

Inference-only asks whether enhancing at query time alone helps: the full method's texts
through the retriever that never saw them in training.
"""

from __future__ import annotations

from dataclasses import dataclass

from rar_pipeline.core import names
from rar_pipeline.core.retrieval.pairs import CONFIGS, AblationConfig


@dataclass(frozen=True)
class IndexedConfig:
    """One column of the ablation: whose retriever embeds which representations."""

    name: str
    retriever: AblationConfig
    representation: AblationConfig

    @property
    def aligned(self) -> bool:
        """Whether the retriever was trained on the representations it embeds."""
        return self.retriever == self.representation

    @property
    def table(self) -> str:
        """The LanceDB table holding this config's candidates."""
        return self.name

    @property
    def index_asset(self) -> str:
        """The asset that builds this config's table."""
        return names.per_config(names.LANCEDB_INDEX, self.name)

    @property
    def checkpoint_asset(self) -> str:
        """The asset that trains the retriever this config embeds with."""
        return names.per_config(names.RETRIEVER_CHECKPOINT, self.retriever.name)


INDEXED: dict[str, IndexedConfig] = {
    **{name: IndexedConfig(name, c, c) for name, c in CONFIGS.items()},
    "inference-only": IndexedConfig("inference-only", CONFIGS["none"], CONFIGS["full"]),
}
