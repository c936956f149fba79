"""The FGD authors' published per-seed results (fracgpu/data/openb/fgd_expected_results/), for comparison."""

from __future__ import annotations

import csv
import statistics
from dataclasses import dataclass

from fracgpu.sim.trace import data_path

# our policy name -> the authors' sc_policy column
PAPER_NAMES = {
    "random": "01-Random",
    "dot-product": "02-DotProd",
    "clustering": "03-GpuClustering",
    "packing": "04-GpuPacking",
    "best-fit": "05-BestFit",
    "fgd": "06-FGD",
}


@dataclass(frozen=True, slots=True)
class Published:
    per_seed: dict[int, float]  # seed -> unallocated GPU % at the bucket

    @property
    def mean(self) -> float:
        return statistics.fmean(self.per_seed.values())

    @property
    def sd(self) -> float:
        v = list(self.per_seed.values())
        return statistics.stdev(v) if len(v) > 1 else 0.0


def published(trace: str, policy: str, bucket: int = 100) -> Published | None:
    """Unallocated GPU % per seed at `bucket` % arrived, or None when the authors did not run it."""
    sc = PAPER_NAMES.get(policy)
    if sc is None:
        return None
    workload = f"openb_pod_list_{trace}"
    out: dict[int, float] = {}
    with data_path("fgd_expected_results/analysis_allo_discrete.csv").open(newline="") as fh:
        for row in csv.DictReader(fh):
            if row["workload"] == workload and row["sc_policy"] == sc and row.get(str(bucket)):
                out[int(row["seed"])] = 100.0 - float(row[str(bucket)])
    return Published(out) if out else None
