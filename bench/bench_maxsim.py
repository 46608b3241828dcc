"""MaxSim scoring: embzoo's Triton kernel vs its plain-torch reference (padded einsum) on late-interaction shapes.

    python bench/bench_maxsim.py [--repeats N]                  # CUDA, bf16
    TRITON_INTERPRET=1 python bench/bench_maxsim.py --smoke     # CPU, fp32, tiny shapes: checks the script

Each case checks that both implementations agree, then times one warm-up call (Triton autotunes there) and the
median of --repeats calls of each; prints ms per call and the ratio reference / Triton (> 1: Triton is faster).
Document lengths are seeded log-normal draws clamped to [8, 512].
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torch

from embzoo import kernels


@dataclass(frozen=True)
class Case:
    name: str
    queries: int
    query_len: int
    docs: int
    median_doc_len: float
    dim: int
    pairs_per_query: int | None  # None: the full [queries, docs] matrix
    reduce: str


CASES = (
    Case("colbert 32q x 1000d full", 32, 32, 1000, 180, 128, None, "sum"),
    Case("colbert 32q x top-100 pairs", 32, 32, 1000, 180, 128, 100, "sum"),
    Case("colbert-small d=96 full", 32, 32, 1000, 180, 96, None, "sum"),
    Case("bge-m3 d=1024 8q x 200d full", 8, 24, 200, 300, 1024, None, "mean"),
)
SMOKE_CASES = (Case("smoke full", 3, 5, 4, 6, 24, None, "sum"), Case("smoke pairs", 3, 5, 4, 6, 24, 2, "mean"))


def cu_seqlens(lengths: torch.Tensor) -> torch.Tensor:
    return torch.cat([lengths.new_zeros(1), lengths.cumsum(0)]).to(torch.int32)


def inputs(case: Case, device: str, dtype: torch.dtype) -> tuple[torch.Tensor, ...]:
    """Normalized query/doc token vectors (as ColBERT and BGE-M3 emit them), offsets and optional pairs."""
    gen = torch.Generator().manual_seed(0)
    doc_lens = torch.exp(torch.randn(case.docs, generator=gen) * 0.6 + math.log(case.median_doc_len))
    doc_lens = doc_lens.round().clamp(8, 512).long()
    q_lens = torch.full((case.queries,), case.query_len)
    queries = torch.nn.functional.normalize(torch.randn(int(q_lens.sum()), case.dim, generator=gen), dim=-1)
    docs = torch.nn.functional.normalize(torch.randn(int(doc_lens.sum()), case.dim, generator=gen), dim=-1)
    pairs = None
    if case.pairs_per_query is not None:
        top = torch.rand(case.queries, case.docs, generator=gen).topk(case.pairs_per_query, dim=1).indices
        pairs = torch.stack([torch.arange(case.queries).repeat_interleave(case.pairs_per_query), top.flatten()], 1)
        pairs = pairs.to(device)
    return (
        queries.to(device, dtype),
        cu_seqlens(q_lens).to(device),
        docs.to(device, dtype),
        cu_seqlens(doc_lens).to(device),
        pairs,
    )


def median_ms(fn: Callable[[], torch.Tensor], repeats: int, sync: Callable[[], None]) -> float:
    fn()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU (needs TRITON_INTERPRET=1)")
    args = ap.parse_args()
    device, dtype, cases = ("cpu", torch.float32, SMOKE_CASES) if args.smoke else ("cuda", torch.bfloat16, CASES)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    print(f"device {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, {dtype}")
    print(f"{'case':32} {'doc tokens':>10} {'triton ms':>10} {'ref ms':>10} {'ref/triton':>10} {'max |diff|':>10}")
    for case in cases:
        q, cu_q, d, cu_d, pairs = inputs(case, device, dtype)
        call = partial(kernels.maxsim, q, cu_q, d, cu_d, pairs, reduce=case.reduce)
        results, ms = {}, {}
        for impl in ("triton", "reference"):
            with kernels.use(impl):
                results[impl] = call()
                ms[impl] = median_ms(call, args.repeats, sync)
        diff = (results["triton"] - results["reference"]).abs().max().item()
        ratio = ms["reference"] / ms["triton"]
        timing = f"{ms['triton']:>10.3f} {ms['reference']:>10.3f} {ratio:>10.2f}"
        print(f"{case.name:32} {d.shape[0]:>10} {timing} {diff:>10.2e}")


if __name__ == "__main__":
    main()
