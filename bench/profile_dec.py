"""Where a DEC batch's GPU time goes: the Qwen3-0.6B-shaped embzoo Backbone (random bf16 weights) on the
first token-budget batches of the DEC workload, under torch.profiler; prints the top CUDA kernels and the
share of GEMM, attention, Triton and other (elementwise, norms, copies) kernels, and host vs device time.

    python bench/profile_dec.py [--batch-tokens 32768] [--batches 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import DEC, QWEN3_06B, SMOKE  # noqa: E402

from embzoo.conversion.families import llama  # noqa: E402
from embzoo.modeling.backbone import Backbone  # noqa: E402
from embzoo.modeling.batch import PackedBatch  # noqa: E402
from embzoo.packing import token_budget_batches  # noqa: E402

CATEGORIES = (  # kernel-name substrings → category, first match wins; the rest are embzoo's Triton kernels
    ("attention", ("flash", "fmha", "attention", "attn")),
    ("gemm", ("gemm", "xmma", "cutlass", "cublas", "nvjet")),
    ("aten elementwise/norm/copy", ("at::native", "memset", "memcpy")),
)


def category(name: str) -> str:
    low = name.lower()
    return next((cat for cat, keys in CATEGORIES if any(k in low for k in keys)), "triton")


@torch.inference_mode()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch-tokens", type=int, default=32768)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the script")
    args = ap.parse_args()
    device, dtype, shape, work = (
        ("cpu", torch.float32, SMOKE.qwen, SMOKE.dec) if args.smoke else ("cuda", torch.bfloat16, {}, DEC)
    )
    cfg = llama.to_arch(QWEN3_06B | shape | {"model_type": "qwen3", "max_position_embeddings": 32768})
    torch.manual_seed(0)
    with torch.device(device):
        model = Backbone(cfg).to(dtype).eval()
    lens = work.lengths()
    g = torch.Generator().manual_seed(0)
    ids = [torch.randint(5, cfg.vocab_size - 5, (n,), generator=g).tolist() for n in lens]
    batches = [
        PackedBatch.from_sequences([ids[i] for i in b]).to(device)
        for b in token_budget_batches(lens, args.batch_tokens)[: args.batches]
    ]
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    for b in batches:  # warm-up
        model(b)
    sync()
    start = time.perf_counter()
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device == "cuda" else [])
    with profile(activities=activities) as prof:
        for b in batches:
            model(b)
        sync()
    wall = time.perf_counter() - start
    tokens = sum(int(b.cu_seqlens[-1]) for b in batches)
    kernels = defaultdict(float)
    for event in prof.key_averages():
        if device == "cpu" or event.device_type == torch.autograd.DeviceType.CUDA:  # CPU: op self times
            kernels[event.key] += (
                event.self_device_time_total if device == "cuda" else event.self_cpu_time_total
            ) / 1e3
    total = sum(kernels.values())
    print(f"{len(batches)} batches, {tokens} tokens, wall {wall * 1e3:.1f} ms (profiled), GPU kernels {total:.1f} ms")
    shares = defaultdict(float)
    for name, ms in kernels.items():
        shares[category(name)] += ms
    print("share:", ", ".join(f"{c} {ms:.1f} ms ({100 * ms / total:.0f}%)" for c, ms in sorted(shares.items())))
    for name, ms in sorted(kernels.items(), key=lambda kv: -kv[1])[:25]:
        print(f"{ms:9.2f} ms {100 * ms / total:5.1f}%  [{category(name)}] {name[:110]}")


if __name__ == "__main__":
    main()
