"""Streamed loading: shards read one at a time, tensors transformed, cast and placed as they are read."""

import json
import os
import subprocess
import sys
import textwrap
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import save_checkpoint
from safetensors.torch import save_file
from transformers import LlamaConfig, LlamaModel

import embzoo
from embzoo.conversion import stream
from embzoo.conversion.load import load_backbone
from embzoo.conversion.rules import WeightMismatch
from embzoo.conversion.snapshot import read_snapshot
from embzoo.modeling.backbone import Backbone

TINY = LlamaConfig(
    vocab_size=100,
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)
NEEDS_CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
FORMATS = {"safetensors": "model.safetensors", "bin": "pytorch_model.bin"}


def write_sharded(folder: Path, config: LlamaConfig, shards: list[dict[str, torch.Tensor]], fmt: str) -> Path:
    """A Hub-layout folder with config.json, the shards as model-0000i-of-0000n.<fmt> files and their index."""
    folder.mkdir(parents=True)
    config.save_pretrained(folder)
    stem, ext = FORMATS[fmt].split(".")
    weight_map = {}
    for i, shard in enumerate(shards, 1):
        name = f"{stem}-{i:05d}-of-{len(shards):05d}.{ext}"
        save_file(shard, str(folder / name)) if fmt == "safetensors" else torch.save(shard, folder / name)
        weight_map |= dict.fromkeys(shard, name)
    (folder / f"{FORMATS[fmt]}.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    return folder


def round_robin(state: dict[str, torch.Tensor], n: int) -> list[dict[str, torch.Tensor]]:
    """The state dealt over n shards by sorted key, so each layer's q/k/v and gate/up parts land in different
    shards."""
    keys = sorted(state)
    return [{k: state[k] for k in keys[i::n]} for i in range(n)]


@pytest.fixture
def reference():
    torch.manual_seed(0)
    return LlamaModel(TINY).eval()


@pytest.fixture
def single(reference, tmp_path, tokenizer_dir):
    return save_checkpoint(reference, tmp_path / "single", tokenizer_dir)


def params(folder: Path, **kwargs) -> dict[str, torch.Tensor]:
    backbone, _ = load_backbone(read_snapshot(folder), **kwargs)
    return dict(backbone.state_dict())


@pytest.mark.parametrize("fmt", FORMATS)
def test_fused_parts_spanning_shards_load_like_one_file(reference, single, tmp_path, fmt):
    state = reference.state_dict()
    shards = round_robin(state, 3)
    shard_of = {k: i for i, shard in enumerate(shards) for k in shard}
    assert len({shard_of[f"layers.0.self_attn.{p}_proj.weight"] for p in "qkv"}) > 1
    ours = params(write_sharded(tmp_path / "sharded", TINY, shards, fmt))
    assert ours.keys() == params(single).keys()
    for name, tensor in params(single).items():
        torch.testing.assert_close(ours[name], tensor, atol=0, rtol=0)
    parts = [state[f"layers.1.self_attn.{p}_proj.weight"] for p in "qkv"]
    torch.testing.assert_close(ours["layers.1.attn.qkv.weight"], torch.cat(parts), atol=0, rtol=0)


def test_transform_sees_each_consumed_tensor_once_as_stored_before_fusing(reference, tmp_path):
    state = {k: v.bfloat16() for k, v in reference.state_dict().items()} | {"lm_head.weight": torch.zeros(100, 32)}
    folder = write_sharded(tmp_path / "bf16", TINY, round_robin(state, 3), "safetensors")
    seen = Counter()

    def double_k(name, tensor):
        seen[name, tensor.dtype, tensor.device.type] += 1
        return tensor * 2 if "k_proj" in name else tensor

    ours = params(folder, transform=double_k)
    consumed = set(state) - {"lm_head.weight"}  # a Drop rule: never read
    assert seen == Counter({(k, torch.bfloat16, "cpu"): 1 for k in consumed})
    q, k, v = (state[f"layers.0.self_attn.{p}_proj.weight"].float() for p in "qkv")
    torch.testing.assert_close(ours["layers.0.attn.qkv.weight"], torch.cat([q, 2 * k, v]), atol=0, rtol=0)


def test_result_is_in_the_requested_dtype_and_device(single):
    fp32 = params(single)
    bf16 = params(single, dtype=torch.bfloat16)
    assert {(t.dtype, t.device.type) for t in bf16.values()} == {(torch.bfloat16, "cpu")}
    for name, tensor in fp32.items():
        torch.testing.assert_close(bf16[name], tensor.bfloat16(), atol=0, rtol=0)
    assert {t.device.type for t in params(single, device="meta").values()} == {"meta"}


def test_embzoo_load_reads_the_backbone_in_the_asked_dtype(single, monkeypatch):
    """No fp32 model first and a converted copy after: embzoo.load passes dtype and device to the loader."""
    monkeypatch.setattr(Backbone, "to", lambda *a, **k: pytest.fail("the backbone was converted after loading"))
    model = embzoo.load(single, device="cpu", dtype="bfloat16").model
    assert {p.dtype for p in model.backbone.parameters()} == {torch.bfloat16}


def test_a_transform_that_changes_a_shape_is_refused(single):
    with pytest.raises(WeightMismatch, match=r"norm.weight: got shape \(2,\), the checkpoint says \(32,\)"):
        params(single, transform=lambda name, t: t[:2] if name == "norm.weight" else t)


@pytest.mark.gpu
@NEEDS_CUDA
def test_cuda_load_matches_cpu(single):
    cuda = params(single, dtype=torch.bfloat16, device="cuda")
    for name, tensor in params(single).items():
        assert cuda[name].device.type == "cuda"
        torch.testing.assert_close(cuda[name].cpu(), tensor.bfloat16(), atol=0, rtol=0)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("fmt", FORMATS)
def test_shards_are_closed_after_loading(reference, tmp_path, fmt):
    """No loaded parameter keeps a shard's file mapped: each shard is released before the next is read."""
    folder = write_sharded(tmp_path / "sharded", TINY, round_robin(reference.state_dict(), 3), fmt)
    opened = []
    real = stream.read_weights

    def read_and_check(file, names):
        assert str(folder) not in Path("/proc/self/maps").read_text(), f"a shard is still mapped when {file} opens"
        opened.append(file.path.name)
        yield from real(file, names)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(stream, "read_weights", read_and_check)
        ours = params(folder)
    assert len(opened) == 3 and str(folder) not in Path("/proc/self/maps").read_text()
    assert ours["layers.0.attn.qkv.weight"].shape == (32 + 2 * 16, 32)


def test_mismatches_are_reported_from_the_headers_before_any_data_is_read(reference, tmp_path, monkeypatch):
    state = reference.state_dict()
    state["layers.1.self_attn.k_proj.weight"] = torch.zeros(8, 32)
    del state["layers.0.mlp.down_proj.weight"]
    folder = write_sharded(tmp_path / "bad", TINY, round_robin(state, 3), "safetensors")
    monkeypatch.setattr(stream, "read_weights", lambda file, names: pytest.fail(f"{file.path} was read"))
    with pytest.raises(WeightMismatch) as err:
        load_backbone(read_snapshot(folder))
    message = str(err.value)
    assert "missing (model parameters no checkpoint tensor fills): ['layers.0.mlp.down.weight']" in message
    assert "layers.1.attn.qkv.weight: checkpoint (56, 32) vs model (64, 32)" in message


PEAK_SCRIPT = """
import sys, torch
from embzoo.conversion.load import load_backbone
from embzoo.conversion.snapshot import read_snapshot

def status(field):
    return next(int(line.split()[1]) * 1024 for line in open("/proc/self/status") if line.startswith(field + ":"))

snapshot, device = read_snapshot(sys.argv[1]), torch.device(sys.argv[2])
torch.empty(0, device=device)  # a CUDA context is not part of the loading
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset the peak (VmHWM) to the current RSS
before = status("VmRSS")
backbone, _ = load_backbone(snapshot, dtype=torch.bfloat16, device=device)
assert {(p.dtype, p.device.type) for p in backbone.parameters()} == {(torch.bfloat16, device.type)}
print(before, status("VmHWM"), sum(p.nbytes for p in backbone.parameters()))
"""
SLACK_MB = 32  # allocator and interpreter noise


def contiguous_shards(shapes: dict[str, torch.Size], n: int) -> list[dict[str, torch.Tensor]]:
    """bf16 tensors of these shapes (a random row repeated: quick to make), cut in key order into n shards
    of about equal bytes, as save_pretrained's max_shard_size does."""
    g = torch.Generator().manual_seed(0)
    total, shards = sum(s.numel() for s in shapes.values()), [{}]
    for key, shape in shapes.items():
        if sum(t.numel() for t in shards[-1].values()) >= total / n:
            shards.append({})
        shards[-1][key] = torch.randn(shape[-1], generator=g).bfloat16().expand(shape).contiguous()
    return shards


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux /proc")
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=[pytest.mark.gpu, NEEDS_CUDA])])
def test_peak_host_memory_is_one_shard_plus_the_model(tmp_path, device):
    """A ~190 MB bf16 Llama-layout checkpoint in 5 shards, loaded as bf16 in a fresh process: the peak RSS
    grows by at most the model (on CPU; nothing on CUDA) plus 1.5 shards (not the 3+ copies of read →
    float() → to(bf16))."""
    config = LlamaConfig(
        vocab_size=4096,
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=8,
        num_attention_heads=16,
        num_key_value_heads=4,
    )
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in LlamaModel(config).state_dict().items()}
    folder = write_sharded(tmp_path / "big", config, contiguous_shards(shapes, 5), "safetensors")
    largest = max(f.stat().st_size for f in folder.glob("*.safetensors"))
    env = os.environ | {"PYTHONPATH": str(Path(embzoo.__file__).parents[1]), "OMP_NUM_THREADS": "1"}
    script = [sys.executable, "-c", textwrap.dedent(PEAK_SCRIPT), str(folder), device]
    run = subprocess.run(script, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    before, peak, model = map(int, run.stdout.split()[-3:])
    mb = 2**20
    budget = (model if device == "cpu" else 0) + 1.5 * largest + SLACK_MB * mb
    print(
        f"{device}: peak RSS growth {(peak - before) / mb:.0f} MB (model {model / mb:.0f} MB, largest shard "
        f"{largest / mb:.0f} MB, budget {budget / mb:.0f} MB)"
    )
    assert peak - before < budget
