"""The graph's asset groups in the order they run (no Dagster import: the CLI reads it).

`rar run --through <group>` stops after one; the demo's own group runs only in `rar demo`.
"""

DEMO_GROUP = "demo"
GROUPS = ("corpus", "enhancement", "retrieval", "index", "evaluation")
