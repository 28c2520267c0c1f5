"""LanceDB ANN search on clustered synthetic sentence-embedding-like vectors.

    python benchmarks/ann_search.py --rows 1000000 --dim 384 --queries 300 \
        --db-dir /tmp/ann_bench --out-json /tmp/ann_bench/results.json --reuse-data --resume

With no --settings this runs the whole study (brute force + 7 index settings, ~70 min on
2 cores); results and the exact commands behind them are in benchmarks/RESULTS.md ("ANN search").
A quick check: `--rows 100000 --queries 100 --settings flat hnsw_sq:p=32,m=16,efc=150`.

Data (seeded, see `Corpus`): 64 topic directions and 4,000 cluster centres on the unit sphere
(each centre = topic + Gaussian offset, so sibling clusters overlap), lognormal cluster sizes,
point = centre + anisotropic Gaussian noise (power-law spectrum, effective dimension ~25) plus
a small isotropic floor, L2-normalised. At 1M rows a held-out query's nearest neighbour has
cosine ~0.76, its 10th ~0.73, about a quarter of its true top-10 come from other clusters, and
the local intrinsic dimension (MLE, k=20) is ~35: not an easy set. Queries (and warm-up
queries) are held-out draws from the same distribution, never rows of the table.

Ground truth: exact top-100 by numpy brute force (float32 dot product on the unit vectors, i.e.
cosine) over the same vectors written to the table; the `flat` setting also checks it against
LanceDB's own exhaustive search (`bypass_vector_index()`).

Each setting runs in a fresh child process (`--worker`; the data is written by another), so
its peak RSS (ru_maxrss) is its own: opening the table, building the index
(`table.create_index("vector", config=HnswSq(...) | IvfPq(...), replace=True)`) and then
querying. Latency is per query, one at a time, end to end through the sync Python API
(`table.search(q).distance_type("cosine").nprobes(n).ef(e).refine_factor(r).select(["id"])
.limit(10).to_arrow()`), after `--warmup` warm-up queries per query configuration. Because the
box may be shared, every measurement records the 1-minute load average and the cores other
processes kept busy meanwhile (from /proc/stat minus this process's CPU time).

Settings (`--settings`, space separated):
    flat                              brute force (no index; bypass_vector_index())
    hnsw_sq:p=256,m=16,efc=150        IVF_HNSW_SQ (lancedb.index.HnswSq: num_partitions, m,
                                      ef_construction)
    ivf_pq:p=1024,sv=48               IVF_PQ (lancedb.index.IvfPq: num_partitions,
                                      num_sub_vectors)
Query grids: --hnsw-nprobes x --hnsw-refine x --hnsw-ef, --pq-nprobes x --pq-refine (nprobes
above the partition count are dropped, and ef below 10 x refine_factor, which lance refuses).
Along each grid row ef (or refine_factor) is raised until a pilot of `--pilot` queries is
slower than `--max-p50-ms`, recall@10 reaches 0.999, or it gains less than `--plateau`.
--resume keeps settings already in --out-json; --requery queries the index the last worker
built without rebuilding it (its build figures are then the stored ones).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

TABLE = "vectors"
K = 10
GT_K = 100
CHUNK = 100_000


# --------------------------------------------------------------------------- data


class Corpus:
    """Seeded generator of clustered, unit-norm vectors (same model for rows and queries)."""

    def __init__(
        self,
        dim: int,
        seed: int,
        topics: int = 64,
        clusters: int = 4000,
        tau: float = 0.45,
        sigma: float = 0.9,
        alpha_centres: float = 0.3,
        alpha_noise: float = 0.55,
        iso: float = 0.1,
    ) -> None:
        self.params = {
            "dim": dim,
            "seed": seed,
            "topics": topics,
            "clusters": clusters,
            "tau": tau,
            "sigma": sigma,
            "alpha_centres": alpha_centres,
            "alpha_noise": alpha_noise,
            "iso": iso,
        }
        rng = np.random.default_rng([seed, 0])
        self.dim, self.sigma, self.iso = dim, sigma, iso
        # a random orthonormal basis; variance along it decays as a power law (anisotropy)
        self.basis = np.linalg.qr(rng.standard_normal((dim, dim)))[0].astype(np.float32)
        self.spec_c = _spectrum(dim, alpha_centres)
        self.spec_n = _spectrum(dim, alpha_noise)
        topic = _unit(self._aniso(rng, topics, self.spec_c))
        parent = rng.integers(0, topics, clusters)
        self.centres = _unit(topic[parent] + tau * self._aniso(rng, clusters, self.spec_c))
        weights = rng.lognormal(0.0, 1.0, clusters)
        self.weights = weights / weights.sum()

    def _aniso(self, rng: np.random.Generator, n: int, spec: np.ndarray) -> np.ndarray:
        z = rng.standard_normal((n, self.dim), dtype=np.float32) * spec
        return z @ self.basis.T

    def draw(self, rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
        """n points and their cluster labels."""
        label = rng.choice(len(self.centres), n, p=self.weights)
        noise = self._aniso(rng, n, self.spec_n)
        noise += self.iso / np.sqrt(self.dim) * rng.standard_normal((n, self.dim), np.float32)
        return _unit(self.centres[label] + self.sigma * noise), label.astype(np.int32)


def _spectrum(dim: int, alpha: float) -> np.ndarray:
    lam = np.arange(1, dim + 1, dtype=np.float64) ** (-alpha)
    return (lam / np.sqrt((lam**2).sum())).astype(np.float32)


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def build_data(args: argparse.Namespace, db_dir: Path) -> dict[str, Any]:
    """Write the table, the queries and the exact top-100 (numpy) into db_dir."""
    import lancedb
    import pyarrow as pa

    corpus = Corpus(args.dim, args.seed)
    meta = {"rows": args.rows, "queries": args.queries, "warmup": args.warmup, **corpus.params}
    meta_path = db_dir / "meta.json"
    if args.reuse_data and meta_path.is_file():
        old = json.loads(meta_path.read_text())
        if {k: old.get(k) for k in meta} == meta:
            print(f"reusing data in {db_dir}", file=sys.stderr)
            return old
    db_dir.mkdir(parents=True, exist_ok=True)
    (db_dir / "index_state.json").unlink(missing_ok=True)
    t0 = time.perf_counter()
    queries, q_label = corpus.draw(np.random.default_rng([args.seed, 1]), args.queries)
    warm, _ = corpus.draw(np.random.default_rng([args.seed, 2]), args.warmup)
    rng = np.random.default_rng([args.seed, 3])
    best_s = np.full((args.queries, GT_K), -np.inf, np.float32)
    best_i = np.zeros((args.queries, GT_K), np.int64)
    labels = np.empty(args.rows, np.int32)
    schema = pa.schema(
        [("id", pa.int64()), ("vector", pa.list_(pa.float32(), args.dim))],
    )

    def batches():
        nonlocal best_s, best_i
        for start in range(0, args.rows, CHUNK):
            n = min(CHUNK, args.rows - start)
            x, lab = corpus.draw(rng, n)
            labels[start : start + n] = lab
            sims = queries @ x.T
            kk = min(GT_K, n)
            part = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
            cand_s = np.concatenate([best_s, np.take_along_axis(sims, part, 1)], axis=1)
            cand_i = np.concatenate([best_i, part + start], axis=1)
            order = np.argsort(-cand_s, axis=1, kind="stable")[:, :GT_K]
            best_s = np.take_along_axis(cand_s, order, 1)
            best_i = np.take_along_axis(cand_i, order, 1)
            ids = pa.array(np.arange(start, start + n, dtype=np.int64))
            vec = pa.FixedSizeListArray.from_arrays(pa.array(x.reshape(-1)), args.dim)
            yield pa.RecordBatch.from_arrays([ids, vec], schema=schema)

    db = lancedb.connect(str(db_dir))
    reader = pa.RecordBatchReader.from_batches(schema, batches())
    db.create_table(TABLE, data=reader, schema=schema, mode="overwrite")
    gen_s = time.perf_counter() - t0
    np.save(db_dir / "queries.npy", queries)
    np.save(db_dir / "warm.npy", warm)
    np.save(db_dir / "gt_ids.npy", best_i)
    np.save(db_dir / "gt_sims.npy", best_s)

    # how hard is this set? (diagnostics reported with the results)
    d = np.sqrt(np.maximum(2.0 - 2.0 * best_s[:, :20].astype(np.float64), 1e-12))
    lid = -1.0 / np.mean(np.log(d[:, :-1] / d[:, -1:]), axis=1)
    meta.update(
        {
            "gen_and_write_s": round(gen_s, 1),
            "table_mb": round(_du(db_dir / f"{TABLE}.lance") / 2**20, 1),
            "gt": "numpy brute force, float32 dot on unit vectors (= cosine), exact top-100",
            "top1_cos_mean": round(float(best_s[:, 0].mean()), 3),
            "top10_cos_mean": round(float(best_s[:, K - 1].mean()), 3),
            "top100_cos_mean": round(float(best_s[:, GT_K - 1].mean()), 3),
            "top10_same_cluster_frac": round(
                float((labels[best_i[:, :K]] == q_label[:, None]).mean()), 3
            ),
            "lid_mle_k20_median": round(float(np.median(lid)), 1),
        }
    )
    meta_path.write_text(json.dumps(meta, indent=1))
    return meta


def _du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


# --------------------------------------------------------------------------- settings


def parse_setting(text: str) -> dict[str, Any]:
    """'hnsw_sq:p=256,m=16,efc=150' -> {'kind': 'hnsw_sq', 'p': 256, ...}."""
    kind, _, rest = text.partition(":")
    if kind not in ("flat", "hnsw_sq", "ivf_pq"):
        raise SystemExit(f"unknown setting kind {kind!r} in {text!r}")
    spec: dict[str, Any] = {"kind": kind, "name": text}
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        spec[key] = int(value)
    return spec


def index_config(spec: dict[str, Any]):
    from lancedb.index import HnswSq, IvfPq

    if spec["kind"] == "hnsw_sq":
        return HnswSq(
            distance_type="cosine",
            num_partitions=spec.get("p"),
            m=spec.get("m", 20),
            ef_construction=spec.get("efc", 300),
        )
    return IvfPq(
        distance_type="cosine", num_partitions=spec.get("p"), num_sub_vectors=spec.get("sv")
    )


def _ints(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v]


# --------------------------------------------------------------------------- worker


def _rss_mb() -> float:
    import psutil

    return psutil.Process().memory_info().rss / 2**20


def _maxrss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load1() -> float:
    return round(os.getloadavg()[0], 2)


def _cpu() -> tuple[float, float, float]:
    """(machine busy CPU s, this process's CPU s, wall s) for `_other_cores`."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    busy = sum(fields) - fields[3] - fields[4]  # minus idle and iowait
    own = os.times()
    return busy / os.sysconf("SC_CLK_TCK"), own.user + own.system, time.perf_counter()


def _other_cores(start: tuple[float, float, float]) -> float:
    """Average number of cores other processes kept busy since `start`."""
    end = _cpu()
    return round(max(0.0, (end[0] - start[0]) - (end[1] - start[1])) / (end[2] - start[2]), 2)


def build_index(table, spec: dict[str, Any], db_dir: Path) -> dict[str, Any]:
    """create_index with replace=True; wall/CPU time, peak RSS, size of the new index files."""
    idx_dir = db_dir / f"{TABLE}.lance" / "_indices"
    before = set(idx_dir.iterdir()) if idx_dir.is_dir() else set()
    out: dict[str, Any] = {"load1_build_start": _load1()}
    cpu0 = _cpu()
    table.create_index("vector", config=index_config(spec), replace=True)
    cpu1 = _cpu()
    out["build_s"] = round(cpu1[2] - cpu0[2], 1)
    out["build_cpu_s"] = round(cpu1[1] - cpu0[1], 1)
    out["build_other_cores"] = _other_cores(cpu0)
    out["load1_build_end"] = _load1()
    out["peak_rss_build_mb"] = round(_maxrss_mb())
    new = [p for p in idx_dir.iterdir() if p not in before]
    out["index_mb"] = round(sum(_du(p) for p in new) / 2**20, 1)
    return out


def run_worker(args: argparse.Namespace) -> dict[str, Any]:
    import lancedb

    spec = json.loads(args.worker)
    db_dir = Path(args.db_dir)
    queries = np.load(db_dir / "queries.npy")
    warm = np.load(db_dir / "warm.npy")
    gt = np.load(db_dir / "gt_ids.npy")[:, :K]
    table = lancedb.connect(str(db_dir)).open_table(TABLE)
    out: dict[str, Any] = {"setting": spec["name"], "rss_open_mb": round(_rss_mb())}

    def measure(n_queries: int, **knobs: int) -> dict[str, Any]:
        def one(q: np.ndarray) -> tuple[float, np.ndarray]:
            t = time.perf_counter()
            s = table.search(q, vector_column_name="vector").distance_type("cosine")
            if spec["kind"] == "flat":
                s = s.bypass_vector_index()
            else:
                s = s.nprobes(knobs["nprobes"])
                if "ef" in knobs:
                    s = s.ef(knobs["ef"])
                if knobs.get("refine"):
                    s = s.refine_factor(knobs["refine"])
            res = s.select(["id"]).limit(K).to_arrow()
            return (time.perf_counter() - t) * 1e3, res.column("id").to_numpy()

        for q in warm[: args.warmup]:
            one(q)
        load, cpu0 = _load1(), _cpu()
        lat, rec = [], []
        for i in range(n_queries):
            ms, ids = one(queries[i])
            lat.append(ms)
            rec.append(len(set(ids.tolist()) & set(gt[i].tolist())) / K)
        row = {
            **knobs,
            "n": n_queries,
            "p50_ms": round(float(np.percentile(lat, 50)), 2),
            "p95_ms": round(float(np.percentile(lat, 95)), 2),
            "mean_ms": round(float(np.mean(lat)), 2),
            "recall10": round(float(np.mean(rec)), 4),
            "load1": [load, _load1()],
            "other_cores": _other_cores(cpu0),
        }
        print(f"  {spec['name']} {row}", file=sys.stderr, flush=True)
        return row

    if spec["kind"] == "flat":
        out["rows"] = [measure(min(args.flat_queries, len(queries)))]
        out["peak_rss_mb"] = round(_maxrss_mb())
        return out

    state_path = db_dir / "index_state.json"
    state = json.loads(state_path.read_text()) if state_path.is_file() else {}
    if args.requery and state.get("setting") == spec["name"]:
        out.update({k: v for k, v in state.items() if k not in ("setting", "rss_open_mb")})
        out["requery"] = True  # index reused: build figures are from the run that built it
    else:
        out.update(build_index(table, spec, db_dir))
        state_path.write_text(json.dumps(out))
    table = lancedb.connect(str(db_dir)).open_table(TABLE)  # serve from a fresh handle

    rows: list[dict[str, Any]] = []
    nparts = spec.get("p") or 1
    if spec["kind"] == "hnsw_sq":
        grid = [
            ({"nprobes": n, "refine": r} if r else {"nprobes": n}, "ef", _ints(args.hnsw_ef))
            for r in _ints(args.hnsw_refine)
            for n in _ints(args.hnsw_nprobes)
            if n <= nparts
        ]
    else:
        grid = [
            ({"nprobes": n}, "refine", _ints(args.pq_refine))
            for n in _ints(args.pq_nprobes)
            if n <= nparts
        ]
    for fixed, knob, values in grid:
        prev = -1.0
        for value in values:
            if knob == "ef" and value < K * fixed.get("refine", 1):
                continue  # lance: ef must be >= the k it is asked for (limit x refine_factor)
            knobs = {**fixed, knob: value}
            pilot = measure(min(args.pilot, len(queries)), **knobs)
            if pilot["p50_ms"] > args.max_p50_ms:
                pilot["pilot_only"] = True
                rows.append(pilot)
                break
            row = measure(len(queries), **knobs)
            rows.append(row)
            # raising ef/refine further only costs time once recall is saturated or flat
            if row["recall10"] >= 0.999 or row["recall10"] - prev < args.plateau:
                break
            prev = row["recall10"]
    out["rows"] = rows
    out["peak_rss_mb"] = round(_maxrss_mb())
    out["rss_serving_mb"] = round(_rss_mb())
    return out


# --------------------------------------------------------------------------- report


def _knobs(row: dict[str, Any]) -> str:
    text = " ".join(f"{k}={row[k]}" for k in ("nprobes", "ef", "refine") if k in row)
    return text or "bypass_vector_index"


def markdown(results: list[dict[str, Any]], aim: tuple[float, float]) -> str:
    """One row per measured query configuration; bold recall where the aim is met."""
    p50_aim, rec_aim = aim
    lines = [
        "| setting | query | build s (CPU s) | index MB | peak RSS MB (build / all) "
        "| p50 ms | p95 ms | recall@10 | load avg (build; query) | other procs, cores |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for res in results:
        for row in res["rows"]:
            if row.get("pilot_only"):
                continue
            if res["setting"] == "flat":
                build, size, rss, load_b, oth_b = "-", "-", f"- / {res['peak_rss_mb']}", "-", "-"
            else:
                build = f"{res['build_s']} ({res['build_cpu_s']})"
                size = f"{res['index_mb']}"
                rss = f"{res['peak_rss_build_mb']} / {res['peak_rss_mb']}"
                load_b = f"{res['load1_build_start']}-{res['load1_build_end']}"
                oth_b = res["build_other_cores"]
            hit = row["p50_ms"] <= p50_aim and row["recall10"] >= rec_aim
            rec = f"**{row['recall10']:.3f}**" if hit else f"{row['recall10']:.3f}"
            lines.append(
                f"| {res['setting']} | {_knobs(row)} | {build} | {size} | {rss} "
                f"| {row['p50_ms']} | {row['p95_ms']} | {rec} "
                f"| {load_b}; {row['load1'][0]}-{row['load1'][1]} "
                f"| {oth_b}; {row['other_cores']} |"
            )
    return "\n".join(lines)


def frontier(results: list[dict[str, Any]]) -> list[tuple[float, float, str]]:
    """Pareto set (lowest p50 for its recall) over every measured index configuration."""
    pts = [
        (row["p50_ms"], row["recall10"], f"{res['setting']} {_knobs(row)}")
        for res in results
        if res["setting"] != "flat"
        for row in res["rows"]
        if not row.get("pilot_only")
    ]
    pts.sort(key=lambda p: (p[0], -p[1]))
    best, out = -1.0, []
    for p in pts:
        if p[1] > best:
            out.append(p)
            best = p[1]
    return out


# --------------------------------------------------------------------------- main


def _child(args: argparse.Namespace, extra: list[str]) -> None:
    """Run this script again in a fresh process (its ru_maxrss is then its own)."""
    cmd = [sys.executable, __file__, *extra]
    for key in (
        "rows dim queries warmup seed db_dir hnsw_nprobes hnsw_ef hnsw_refine pq_nprobes pq_refine "
        "flat_queries pilot max_p50_ms plateau"
    ).split():
        cmd += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    cmd += [
        f"--{flag.replace('_', '-')}" for flag in ("reuse_data", "requery") if getattr(args, flag)
    ]
    env = {**os.environ, "LANCEDB_LOG": os.environ.get("LANCEDB_LOG", "error")}
    subprocess.run(cmd, check=True, env=env)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--rows", type=int, default=1_000_000)
    ap.add_argument("--dim", type=int, default=384)
    ap.add_argument("--queries", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=30, help="warm-up queries per configuration")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--db-dir", default="/tmp/ann_bench", help="table + queries + ground truth")
    ap.add_argument("--reuse-data", action="store_true", help="keep the table if its meta matches")
    ap.add_argument("--out-json", help="all measurements (written after every setting)")
    ap.add_argument(
        "--resume", action="store_true", help="skip settings already in --out-json (same data)"
    )
    ap.add_argument(
        "--settings",
        nargs="+",
        default=[
            "flat",
            "hnsw_sq:p=256,m=16,efc=150",
            "hnsw_sq:p=64,m=16,efc=150",
            "hnsw_sq:p=1024,m=16,efc=150",
            "hnsw_sq:p=256,m=20,efc=300",
            "ivf_pq:p=1024,sv=48",
            "ivf_pq:p=1024,sv=96",
        ],
    )
    ap.add_argument("--hnsw-nprobes", default="2,3,5,10,20,50")
    ap.add_argument("--hnsw-ef", default="20,50,100,300,1000,3000,10000")
    ap.add_argument("--hnsw-refine", default="0,2", help="refine_factor values (0: none)")
    ap.add_argument("--pq-nprobes", default="10,20,30,50")
    ap.add_argument("--pq-refine", default="10,20,50")
    ap.add_argument("--flat-queries", type=int, default=50, help="queries for brute force")
    ap.add_argument("--pilot", type=int, default=30, help="queries in a configuration's pilot")
    ap.add_argument("--max-p50-ms", type=float, default=60.0, help="skip slower configurations")
    ap.add_argument(
        "--plateau", type=float, default=0.002, help="stop raising ef/refine below this gain"
    )
    ap.add_argument("--aim-p50-ms", type=float, default=10.0)
    ap.add_argument("--aim-recall", type=float, default=0.95)
    ap.add_argument(
        "--requery",
        action="store_true",
        help="if the table's index is this setting's (last built), query it without rebuilding",
    )
    ap.add_argument("--make-data", action="store_true", help=argparse.SUPPRESS)
    ap.add_argument("--worker", help=argparse.SUPPRESS)
    args = ap.parse_args()

    db_dir = Path(args.db_dir)
    if args.make_data:
        build_data(args, db_dir)
        return
    if args.worker:
        Path(args.out_json).write_text(json.dumps(run_worker(args)))
        return

    t_all = time.perf_counter()
    _child(args, ["--make-data"])
    meta = json.loads((db_dir / "meta.json").read_text())
    meta["cpu_count"] = os.cpu_count()
    print(json.dumps(meta), file=sys.stderr)
    results: list[dict[str, Any]] = []
    if args.resume and args.out_json and Path(args.out_json).is_file():
        old = json.loads(Path(args.out_json).read_text())
        if old["meta"].get("gen_and_write_s") == meta.get("gen_and_write_s"):  # same table
            results = [r for r in old["results"] if r["setting"] in args.settings]
    done = {r["setting"] for r in results}
    for text in args.settings:
        if text in done:
            continue
        spec = parse_setting(text)
        print(f"== {text}", file=sys.stderr, flush=True)
        tmp = db_dir / "worker.json"
        _child(args, ["--worker", json.dumps(spec), "--out-json", str(tmp)])
        res = json.loads(tmp.read_text())
        print(json.dumps({k: v for k, v in res.items() if k != "rows"}), file=sys.stderr)
        results.append(res)
        results.sort(key=lambda r: args.settings.index(r["setting"]))
        if args.out_json:  # after every setting, so a later failure loses nothing
            payload = {"meta": meta, "results": results, "frontier": frontier(results)}
            Path(args.out_json).write_text(json.dumps(payload, indent=1))
    meta["this_run_s"] = round(time.perf_counter() - t_all, 1)
    print(json.dumps(meta, indent=1))
    print(markdown(results, (args.aim_p50_ms, args.aim_recall)))
    print("\nfrontier (p50 ms, recall@10):")
    for p50, rec, name in frontier(results):
        print(f"  {p50:7.2f} ms  {rec:.3f}  {name}")


if __name__ == "__main__":
    main()
