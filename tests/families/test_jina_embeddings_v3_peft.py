"""jina-embeddings-v3's task LoRA as standard PEFT adapters, one folder per task (the -hf layout), both ways:
embzoo's encode per task against transformers' JinaEmbeddingsV3Model with peft loading that task's folder."""

import copy
import json
import shutil

import pytest
import torch
from conftest import ragged_ids
from peft import LoraConfig, PeftModel, get_peft_model
from safetensors.torch import load_file, save_file
from test_jina_embeddings_v3 import (
    INSTRUCTIONS,
    SMALL,
    TASKS,
    TEXTS,
    build_native,
    lora_factors,
    packed_means,
    reference_means,
    to_original,
)

import embzoo
from embzoo.cli import main
from embzoo.conversion.load import load_backbone
from embzoo.conversion.rules import WeightMismatch
from embzoo.conversion.snapshot import read_snapshot

FOLDERS = ["retrieval_query", "retrieval_passage", "separation", "classification", "text_matching"]
TARGETS = ["word_embeddings", "token_type_embeddings", "q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"]


def save_task_adapters(folder, ref, seed=5):
    """One random peft LoRA per task in folder/<task folder>, as the -hf repo keeps them; ranks differ per task and
    fc2 has its own alpha, so padding and per-module scaling show."""
    g = torch.Generator().manual_seed(seed)
    for t, sub in enumerate(FOLDERS):
        config = LoraConfig(r=t + 1, lora_alpha=2.0, target_modules=TARGETS, alpha_pattern={"fc2": 5.0})
        model = get_peft_model(copy.deepcopy(ref), config)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_" in name:
                    p.copy_(0.3 * torch.randn(p.shape, generator=g))
        model.save_pretrained(folder / sub)


def peft_reference(ref, adapter_folder):
    """transformers' model with peft applying the adapter, as the -hf checkpoints are used."""
    return PeftModel.from_pretrained(copy.deepcopy(ref), adapter_folder).eval()


@pytest.fixture
def native_with_adapters(make_checkpoint):
    folder, ref = build_native(make_checkpoint, "hf")
    save_task_adapters(folder, ref)
    return folder, ref


def test_hf_layout_task_adapters_match_peft(native_with_adapters):
    folder, ref = native_with_adapters
    backbone, _ = load_backbone(read_snapshot(folder))
    lora = backbone.task_lora
    assert lora.tasks == tuple(TASKS)
    seqs = ragged_ids([3, 17, 1, 40], SMALL["vocab_size"], seed=7)
    with lora.active(None):
        torch.testing.assert_close(packed_means(backbone, seqs), reference_means(ref, seqs), atol=1e-4, rtol=0)
    for task, sub in zip(TASKS, FOLDERS, strict=True):
        want = reference_means(peft_reference(ref, folder / sub), seqs)
        with lora.active(task):
            torch.testing.assert_close(packed_means(backbone, seqs), want, atol=1e-4, rtol=0)
        with lora.merged(task):
            torch.testing.assert_close(packed_means(backbone, seqs), want, atol=1e-4, rtol=0)
        assert not torch.allclose(want, reference_means(ref, seqs), atol=1e-3)


def test_hf_layout_encode_task(native_with_adapters):
    """A local -hf copy needs no recipe: its architecture names jina-embeddings-v3, so a task brings its instruction
    as well as its adapter, and the vectors are normalized."""
    folder, ref = native_with_adapters
    model = embzoo.load(folder, device="cpu")
    assert model.normalize
    for task, sub in (("text-matching", "text_matching"), ("retrieval.query", "retrieval_query")):
        ids, _ = model.tokenizer.encode([INSTRUCTIONS[task] + t for t in TEXTS])
        want = reference_means(peft_reference(ref, folder / sub), ids)
        got = model.encode(TEXTS, task=task, convert_to_tensor=True, normalize=False)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_hf_layout_rejects_lora_on_unknown_modules(native_with_adapters):
    folder, _ = native_with_adapters
    tensors = load_file(folder / "separation" / "adapter_model.safetensors")
    tensors["base_model.model.layers.0.extra.lora_A.weight"] = torch.zeros(3, 4)
    save_file(tensors, folder / "separation" / "adapter_model.safetensors")
    with pytest.raises(WeightMismatch, match=r"layers\.0\.extra"):
        load_backbone(read_snapshot(folder))


@pytest.fixture
def original_layout(make_checkpoint):
    folder, ref = build_native(make_checkpoint, "orig")
    sd = ref.state_dict()
    return to_original(folder, sd, lora_factors(sd, SMALL["num_hidden_layers"])), ref


def test_convert_lora_to_peft_loads_with_peft(original_layout, tmp_path, capsys):
    folder, ref = original_layout
    dst = tmp_path / "adapters"
    main(["convert", "--lora-to-peft", str(folder), str(dst), "--base-model", "local/jina-v3-hf"])
    assert sorted(p.name for p in dst.iterdir()) == sorted(FOLDERS)
    assert capsys.readouterr().out.split() == [str(dst / f) for f in FOLDERS]
    config = json.loads((dst / "retrieval_query" / "adapter_config.json").read_text())
    assert (config["peft_type"], config["base_model_name_or_path"], config["r"]) == ("LORA", "local/jina-v3-hf", 4)
    model = embzoo.load(folder, device="cpu")
    for task, sub in zip(TASKS, FOLDERS, strict=True):
        ids, _ = model.tokenizer.encode([INSTRUCTIONS[task] + t for t in TEXTS])
        want = reference_means(peft_reference(ref, dst / sub), ids)
        got = model.encode(TEXTS, task=task, convert_to_tensor=True, normalize=False)
        torch.testing.assert_close(got, want, atol=1e-4, rtol=0)


def test_convert_round_trip_through_the_hf_layout(original_layout, make_checkpoint, tmp_path):
    folder, _ = original_layout
    hf, _ = build_native(make_checkpoint, "hf")  # the same seed: the same base weights
    main(["convert", "--lora-to-peft", str(folder), str(tmp_path / "a")])
    for sub in FOLDERS:
        shutil.copytree(tmp_path / "a" / sub, hf / sub)
    original, _ = load_backbone(read_snapshot(folder))
    converted, _ = load_backbone(read_snapshot(hf))
    seqs = ragged_ids([5, 30, 2], SMALL["vocab_size"], seed=9)
    for task in TASKS:
        with original.task_lora.active(task), converted.task_lora.active(task):
            torch.testing.assert_close(packed_means(converted, seqs), packed_means(original, seqs), atol=1e-5, rtol=0)


def test_convert_refuses_a_model_without_task_lora(make_checkpoint, tmp_path):
    folder, _ = build_native(make_checkpoint, "plain")
    with pytest.raises(SystemExit, match="no task LoRA adapters"):
        main(["convert", "--lora-to-peft", str(folder), str(tmp_path / "a")])
