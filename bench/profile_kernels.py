"""Where a packed batch's GPU time goes: an embzoo Backbone of a benchmarked shape (random bf16 weights) on the first
token-budget batches of its workload (DEC for the Qwen3-0.6B shape, ENC for the encoders), under torch.profiler;
prints the top CUDA kernels and the share of GEMM, attention, Triton and other (elementwise, norms, copies) kernels.

    python bench/profile_kernels.py [--model qwen3-0.6b|bert-base|modernbert-base] [--batch-tokens 32768] [--batches 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).parent))
from bench_core import FULL, QWEN3_06B, SMOKE, Setup, Workload  # noqa: E402

from embzoo.config import ArchConfig  # noqa: E402
from embzoo.conversion.families import bert, llama, modernbert  # noqa: E402
from embzoo.modeling.backbone import Backbone  # noqa: E402
from embzoo.modeling.batch import PackedBatch  # noqa: E402
from embzoo.packing import token_budget_batches  # noqa: E402


def _transformers_config(name: str, overrides: dict[str, Any]) -> dict[str, Any]:
    """A transformers config class's defaults (the protocol's base sizes) with overrides, as a config.json dict."""
    import transformers

    return getattr(transformers, name)(**overrides).to_dict()


def arch(model: str, setup: Setup) -> tuple[ArchConfig, Workload]:
    """The model's ArchConfig through its family's translation, and its workload."""
    if model == "qwen3-0.6b":
        hf = QWEN3_06B | setup.qwen | {"model_type": "qwen3", "max_position_embeddings": 32768}
        return llama.to_arch(hf), setup.dec
    if model == "bert-base":
        return bert.to_arch(_transformers_config("BertConfig", setup.bert)), setup.enc
    return modernbert.to_arch(_transformers_config("ModernBertConfig", setup.bert)), setup.enc


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
    ap.add_argument("--model", choices=("qwen3-0.6b", "bert-base", "modernbert-base"), default="qwen3-0.6b")
    ap.add_argument("--batch-tokens", type=int, default=32768)
    ap.add_argument("--batches", type=int, default=3)
    ap.add_argument("--smoke", action="store_true", help="tiny shapes on the CPU: checks the script")
    args = ap.parse_args()
    setup = SMOKE if args.smoke else FULL
    device, dtype = setup.device, setup.dtype
    cfg, work = arch(args.model, setup)
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
    head = f"{args.model}: {len(batches)} {work.name.upper()} batches, {tokens} tokens"
    print(f"{head}, wall {wall * 1e3:.1f} ms (profiled), GPU kernels {total:.1f} ms")
    shares = defaultdict(float)
    for name, ms in kernels.items():
        shares[category(name)] += ms
    print("share:", ", ".join(f"{c} {ms:.1f} ms ({100 * ms / total:.0f}%)" for c, ms in sorted(shares.items())))
    for name, ms in sorted(kernels.items(), key=lambda kv: -kv[1])[:25]:
        print(f"{ms:9.2f} ms {100 * ms / total:5.1f}%  [{category(name)}] {name[:110]}")


if __name__ == "__main__":
    main()
