"""``nandoctor feature-stats`` against ``pandas.read_parquet(...).describe()``, in one run.

Generates a parquet file of about 1 GB shaped like a detector's pulse table (unless it exists),
then runs each side in its own subprocess and prints wall time and peak memory (max RSS) with
the ratios. Target: feature-stats no slower than pandas, at most a fifth of its peak memory.

    python scripts/bench_feature_stats.py [--rows 29000000] [--path /tmp/nandoctor_bench.parquet]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

MEASURE = r"""
import json, resource, sys, time
start = time.perf_counter()
{body}
elapsed = time.perf_counter() - start
print(json.dumps({{"seconds": elapsed, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}}))
"""

PANDAS = "import pandas as pd\nresult = pd.read_parquet(sys.argv[1]).describe()"
NANDOCTOR = (
    "from nandoctor.featurestats.files import analyse\nresult = analyse([sys.argv[1]], progress=lambda message: None)"
)


def generate(path: Path, rows: int, chunk: int = 1_000_000) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    writer = None
    for start in range(0, rows, chunk):
        n = min(chunk, rows - start)
        table = pa.table(
            {
                "time": rng.uniform(5714, 77785, n),
                "charge": np.clip(rng.lognormal(0, 1.2, n), 0.025, 2762),
                "sensor_id": rng.integers(0, 5160, n),
                "auxiliary": rng.integers(0, 2, n),
                "x": rng.normal(0, 150, n),
                "y": rng.normal(0, 150, n),
            }
        )
        writer = writer or pq.ParquetWriter(path, table.schema, compression="none")
        writer.write_table(table, row_group_size=chunk)
    writer.close()


def measure(body: str, path: Path) -> dict:
    output = subprocess.run(
        [sys.executable, "-c", MEASURE.format(body=body), str(path)], capture_output=True, text=True, check=True
    ).stdout
    return json.loads(output.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=29_000_000)
    parser.add_argument("--path", type=Path, default=Path("/tmp/nandoctor_bench.parquet"))
    args = parser.parse_args()
    if not args.path.exists():
        start = time.perf_counter()
        generate(args.path, args.rows)
        print(f"generated {args.path} in {time.perf_counter() - start:.1f} s", file=sys.stderr)
    size_gb = args.path.stat().st_size / 1e9
    runs = {"pandas": [], "nandoctor": []}
    for _ in range(2):  # interleaved, best of two: these machines are noisy
        runs["pandas"].append(measure(PANDAS, args.path))
        runs["nandoctor"].append(measure(NANDOCTOR, args.path))
    best = {
        k: {"seconds": min(r["seconds"] for r in v), "peak_mb": min(r["peak_mb"] for r in v)} for k, v in runs.items()
    }
    p, n = best["pandas"], best["nandoctor"]
    print(f"file: {args.path} ({size_gb:.2f} GB)")
    print(f"pandas read_parquet().describe(): {p['seconds']:6.1f} s  peak {p['peak_mb']:7.0f} MB")
    print(f"nandoctor feature-stats:          {n['seconds']:6.1f} s  peak {n['peak_mb']:7.0f} MB")
    print(
        f"ratios (nandoctor / pandas): time {n['seconds'] / p['seconds']:.2f}x (target <= 1), "
        f"peak memory {n['peak_mb'] / p['peak_mb']:.2f}x (target <= 0.2)"
    )


if __name__ == "__main__":
    main()
