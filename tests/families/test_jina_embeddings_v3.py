"""jina-embeddings-v3: the original (remote-code, parametrized) layout with stacked task LoRA and the
transformers-native layout, against transformers' JinaEmbeddingsV3Model. transformers has no task LoRA (its -hf
repo applies one PEFT adapter per task), so each task's reference is that model with the task's update merged
into its weights as the spec states it (W + B@A·alpha/r for Linear, W + A@B·alpha/r for Embedding)."""

import copy
import json

import pytest
import torch
from conftest import padded, ragged_ids
from safetensors.torch import save_file
from transformers import JinaEmbeddingsV3Config, JinaEmbeddingsV3Model

import embzoo
from embzoo.config import UnsupportedConfig
from embzoo.conversion.families import jina_embeddings_v3, jina_xlm_roberta
from embzoo.conversion.load import load_backbone
from embzoo.conversion.snapshot import read_snapshot
from embzoo.modeling.batch import PackedBatch
from embzoo.registry import family_for

TASKS = ["retrieval.query", "retrieval.passage", "separation", "classification", "text-matching"]
INSTRUCTIONS = {
    "retrieval.query": "Represent the query for retrieving evidence documents: ",
    "retrieval.passage": "Represent the document for retrieval: ",
    "separation": "",
    "classification": "",
    "text-matching": "",
}
AUTO_MAP = {"AutoConfig": "jinaai/xlm-roberta-flash-implementation--configuration_xlm_roberta.XLMRobertaFlashConfig"}
SMALL = dict(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64)
RANK, ALPHA = 4, 2.0  # alpha / rank = 0.5: a wrong scaling shows
# native module → original module; q/k/v share the original's fused Wqkv
MODULES = {
    "embeddings.word_embeddings": "roberta.embeddings.word_embeddings",
    "embeddings.token_type_embeddings": "roberta.embeddings.token_type_embeddings",
    "layers.{i}.self_attn.o_proj": "roberta.encoder.layers.{i}.mixer.out_proj",
    "layers.{i}.mlp.fc1": "roberta.encoder.layers.{i}.mlp.fc1",
    "layers.{i}.mlp.fc2": "roberta.encoder.layers.{i}.mlp.fc2",
}
NORMS = {
    "embeddings.LayerNorm": "roberta.emb_ln",
    "layers.{i}.post_attention_layernorm": "roberta.encoder.layers.{i}.norm1",
    "layers.{i}.post_mlp_layernorm": "roberta.encoder.layers.{i}.norm2",
}


def original_config(**changes):
    cfg = dict(SMALL, auto_map=AUTO_MAP, architectures=["XLMRobertaModel"], position_embedding_type="rotary")
    cfg |= dict(rotary_emb_base=20000.0, max_position_embeddings=8194, type_vocab_size=1, layer_norm_eps=1e-5)
    cfg |= dict(lora_adaptations=TASKS, lora_rank=RANK, lora_alpha=ALPHA, task_instructions=INSTRUCTIONS)
    return cfg | dict(hidden_act="gelu", pad_token_id=1, **changes)


def build_native(make_checkpoint, name="ckpt"):
    """A tiny transformers JinaEmbeddingsV3Model saved in its own (-hf) layout; MiniLM's tokenizer pads with 0."""
    config = JinaEmbeddingsV3Config(**SMALL, pad_token_id=0, layer_norm_eps=1e-5)
    config.initializer_range = 0.2
    return make_checkpoint(JinaEmbeddingsV3Model, config, name=name, noise=0.1)


@pytest.fixture
def native(make_checkpoint):
    return build_native(make_checkpoint)


def module_names(layers):
    """Native name → original name of every parametrized module but the fused Wqkv."""
    return {n.format(i=i): o.format(i=i) for n, o in MODULES.items() for i in range(layers)}


def lora_factors(sd, layers, seed=1):
    """Random non-zero stacked factors per original module: Linear A [K, r, in], B [K, out, r];
    Embedding A [K, V, r], B [K, r, D]."""
    g = torch.Generator().manual_seed(seed)
    k, out = len(TASKS), {}
    shapes = {name: sd[name + ".weight"].shape for name in module_names(layers)}
    for i in range(layers):
        q = sd[f"layers.{i}.self_attn.q_proj.weight"].shape
        shapes[f"layers.{i}.qkv"] = (3 * q[0], q[1])
    for name, (rows, cols) in shapes.items():
        embedding = "embeddings" in name
        a = (k, rows, RANK) if embedding else (k, RANK, cols)
        b = (k, RANK, cols) if embedding else (k, rows, RANK)
        out[name] = (0.3 * torch.randn(a, generator=g), 0.3 * torch.randn(b, generator=g))
    return out


def to_original(folder, sd, factors):
    """The native checkpoint rewritten as jina-embeddings-v3 ships it: flash names, parametrized weights."""
    cfg = original_config()
    out = {}
    for native_name, name in module_names(cfg["num_hidden_layers"]).items():
        out |= parametrized(name, sd, native_name, factors[native_name])
    for i in range(cfg["num_hidden_layers"]):
        qkv = {p: torch.cat([sd[f"layers.{i}.self_attn.{n}_proj.{p}"] for n in "qkv"]) for p in ("weight", "bias")}
        name = f"roberta.encoder.layers.{i}.mixer.Wqkv"
        out |= parametrized(name, {"x.weight": qkv["weight"], "x.bias": qkv["bias"]}, "x", factors[f"layers.{i}.qkv"])
        for native_name, name in NORMS.items():
            for p in ("weight", "bias"):
                out[f"{name.format(i=i)}.{p}"] = sd[f"{native_name.format(i=i)}.{p}"]
    pooler = {"parametrizations.weight.original": "weight", "bias": "bias"}  # the remote code keeps it, unused
    out |= {f"roberta.pooler.dense.{k}": sd[f"pooler.dense.{v}"] for k, v in pooler.items()}
    (folder / "model.safetensors").unlink()
    save_file({k: t.contiguous() for k, t in out.items()}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps(cfg))
    return folder


def parametrized(name, sd, native_name, ab):
    out = {f"{name}.parametrizations.weight.original": sd[native_name + ".weight"]}
    out[f"{name}.parametrizations.weight.0.lora_A"], out[f"{name}.parametrizations.weight.0.lora_B"] = ab
    if native_name + ".bias" in sd:
        out[f"{name}.bias"] = sd[native_name + ".bias"]
    return out


def task_reference(ref, factors, task):
    """transformers' model with `task`'s LoRA update merged into its weights (None: unchanged)."""
    model = copy.deepcopy(ref)
    if task is None:
        return model
    t, scale, sd = TASKS.index(task), ALPHA / RANK, model.state_dict()
    with torch.no_grad():
        for name, (a, b) in factors.items():
            delta = (a[t] @ b[t] if "embeddings" in name else b[t] @ a[t]) * scale
            if name.endswith(".qkv"):
                for part, d in zip("qkv", delta.chunk(3), strict=True):
                    sd[name.replace("qkv", f"self_attn.{part}_proj") + ".weight"] += d
            else:
                sd[name + ".weight"] += delta
    return model


def reference_means(model, seqs, pad_id=0):
    ids, mask = padded(seqs, pad_id)
    with torch.no_grad():
        h = model(input_ids=ids, attention_mask=mask).last_hidden_state
    return (h * mask[..., None]).sum(1) / mask.sum(1, keepdim=True)


def packed_means(backbone, seqs):
    batch = PackedBatch.from_sequences(seqs)
    with torch.no_grad():
        h = backbone(batch)
    return torch.stack([part.mean(0) for part in h.split([len(s) for s in seqs])])


@pytest.fixture
def original(native):
    folder, ref = native
    sd = ref.state_dict()
    factors = lora_factors(sd, SMALL["num_hidden_layers"])
    return to_original(folder, sd, factors), ref, factors


def test_to_arch_both_layouts():
    arch = jina_embeddings_v3.to_arch(original_config())
    assert (arch.positions, arch.rope_theta, arch.position_offset, arch.type_vocab_size) == ("rope", 20000.0, 0, 1)
    assert (arch.lora_tasks, arch.lora_rank, arch.lora_alpha) == (tuple(TASKS), RANK, ALPHA)
    hf = JinaEmbeddingsV3Config(**SMALL).to_dict()
    native = jina_embeddings_v3.to_arch(hf)
    assert (native.rope_theta, native.norm_eps, native.lora_tasks, native.max_positions) == (20000.0, 1e-5, (), 8194)
    with pytest.raises(UnsupportedConfig, match="rotary"):
        jina_embeddings_v3.to_arch(original_config(position_embedding_type="absolute"))
    with pytest.raises(UnsupportedConfig, match="rope_type"):
        jina_embeddings_v3.to_arch(hf | {"rope_parameters": {"rope_type": "yarn", "rope_theta": 1.0}})


def test_registry_tells_the_flash_configs_apart():
    assert family_for(original_config()) is jina_embeddings_v3
    assert family_for({**original_config(), "position_embedding_type": "absolute"}) is jina_xlm_roberta
    assert family_for({"model_type": "jina_embeddings_v3"}) is jina_embeddings_v3


def test_native_layout_matches_transformers(native):
    folder, ref = native
    backbone, _ = load_backbone(read_snapshot(folder))
    assert backbone.task_lora is None
    seqs = ragged_ids([3, 17, 1, 40], SMALL["vocab_size"], seed=2)
    torch.testing.assert_close(packed_means(backbone, seqs), reference_means(ref, seqs), atol=1e-4, rtol=0)


@pytest.mark.parametrize("task", [None, *TASKS])
def test_original_layout_every_task_on_the_fly_and_merged(original, task):
    folder, ref, factors = original
    backbone, _ = load_backbone(read_snapshot(folder))
    seqs = ragged_ids([3, 17, 1, 40], SMALL["vocab_size"], seed=3)
    want = reference_means(task_reference(ref, factors, task), seqs)
    lora = backbone.task_lora
    with lora.active(task):
        torch.testing.assert_close(packed_means(backbone, seqs), want, atol=1e-4, rtol=0)
    if task is not None:
        base = {n: t.clone() for n, t in backbone.state_dict().items()}
        with lora.merged(task):
            torch.testing.assert_close(packed_means(backbone, seqs), want, atol=1e-4, rtol=0)
        assert all(torch.equal(t, base[n]) for n, t in backbone.state_dict().items())  # restored exactly
        assert not torch.allclose(want, reference_means(ref, seqs), atol=1e-3)  # the adapter changes the output


TEXTS = ["what is rotary position embedding?", "a rope", "Rotary embeddings rotate queries and keys.", "x"]


def encode_reference(folder, ref, factors, texts, task):
    tok = embzoo.load(folder, device="cpu").tokenizer
    prefix = INSTRUCTIONS[task] if task else ""
    ids, _ = tok.encode([prefix + t for t in texts])
    return reference_means(task_reference(ref, factors, task), ids)


def test_encode_task_applies_adapter_and_instruction(original, monkeypatch):
    folder, ref, factors = original
    model = embzoo.load(folder, device="cpu")
    base = model.encode(TEXTS, convert_to_tensor=True)
    torch.testing.assert_close(base, encode_reference(folder, ref, factors, TEXTS, None), atol=1e-4, rtol=0)
    for task in ("retrieval.query", "text-matching"):
        want = encode_reference(folder, ref, factors, TEXTS, task)
        torch.testing.assert_close(model.encode(TEXTS, task=task, convert_to_tensor=True), want, atol=1e-4, rtol=0)
        monkeypatch.setattr(model.model.backbone.task_lora, "can_merge", lambda: False)  # the on-the-fly path
        torch.testing.assert_close(model.encode(TEXTS, task=task, convert_to_tensor=True), want, atol=1e-4, rtol=0)
        monkeypatch.undo()
    torch.testing.assert_close(model.encode(TEXTS, convert_to_tensor=True), base, atol=0, rtol=0)  # weights restored
    query = model.encode(TEXTS[0], task="retrieval.query")
    assert not torch.allclose(torch.from_numpy(query), base[0], atol=1e-3)


def test_mixed_tasks_equal_single_task_calls(original):
    folder, _, _ = original
    model = embzoo.load(folder, device="cpu")
    texts = [f"{t} number {i}" for i, t in enumerate(TEXTS * 3)][:10]
    tasks = [TASKS[i % 5] for i in range(10)]
    mixed = model.encode(texts, task=tasks, convert_to_tensor=True)
    for task in TASKS:
        idx = [i for i, t in enumerate(tasks) if t == task]
        single = model.encode([texts[i] for i in idx], task=task, convert_to_tensor=True)
        torch.testing.assert_close(mixed[idx], single, atol=1e-5, rtol=0)
    states = model.encode(texts, task=tasks, output="tokens")
    for i in (0, 3):
        one = model.encode(texts[i], task=tasks[i], output="tokens")
        torch.testing.assert_close(torch.from_numpy(states[i]), torch.from_numpy(one), atol=1e-5, rtol=0)


def test_bad_task_arguments(original, make_checkpoint):
    folder, _, _ = original
    model = embzoo.load(folder, device="cpu")
    with pytest.raises(ValueError, match=r"unknown task 'retrieval'.*retrieval\.query.*text-matching"):
        model.encode(TEXTS, task="retrieval")
    with pytest.raises(ValueError, match="unknown task 'query'"):
        model.encode(TEXTS[:2], task=["retrieval.query", "query"])
    with pytest.raises(ValueError, match="one per text"):
        model.encode(TEXTS, task=["retrieval.query"])
    with pytest.raises(ValueError, match="pass no prompt"):
        model.encode(TEXTS, task="retrieval.query", prompt="query: ")
    without = embzoo.load(build_native(make_checkpoint, "plain")[0], device="cpu")
    with pytest.raises(ValueError, match="no task adapters"):
        without.encode(TEXTS, task="retrieval.query")


def test_embzoo_folder_reloads_bit_exactly(original, tmp_path):
    from conftest import assert_round_trip

    folder, _, _ = original  # task LoRA factors are backbone parameters: stored under embzoo's names
    run = lambda m: tuple(m.encode(TEXTS, task=t) for t in ("retrieval.query", "text-matching"))  # noqa: E731
    assert_round_trip(folder, folder.parent / "converted", run)
