"""ArchConfig validation and round trip; every family and kernel module has its own test file."""

from pathlib import Path

import pytest
import torch

from embzoo import ArchConfig, UnsupportedConfig
from embzoo.modeling.backbone import Backbone
from embzoo.modeling.batch import PackedBatch
from embzoo.registry import supported_model_types

ROOT = Path(__file__).resolve().parents[1]
SMALL = dict(vocab_size=50, hidden_size=16, num_layers=1, num_heads=2, intermediate_size=32)


def test_round_trip_and_derived_head_dim():
    cfg = ArchConfig(**SMALL, position_offset=2, max_positions=20)
    assert cfg.head_dim == 8
    assert ArchConfig.from_json(cfg.to_json()) == cfg


@pytest.mark.parametrize(
    "changes, message",
    [
        ({"activation": "mish"}, r"ArchConfig.activation='mish'; allowed"),
        ({"num_heads": 3}, "not divisible"),
        ({"num_layers": 0}, "num_layers must be >= 1"),
        ({"qk_norm": "head"}, "needs norm='rms'"),
    ],
)
def test_invalid_values_are_rejected(changes, message):
    with pytest.raises(UnsupportedConfig, match=message):
        ArchConfig(**SMALL | changes)


def test_unknown_field_is_named():
    with pytest.raises(UnsupportedConfig, match=r"unknown ArchConfig fields \['rope'\]"):
        ArchConfig.from_dict({**SMALL, "rope": True})


def test_backbone_refuses_sequences_past_its_positions():
    backbone = Backbone(ArchConfig(**SMALL, position_offset=2, max_positions=10))
    assert backbone.max_seq_len == 8
    with torch.no_grad():
        assert backbone(PackedBatch.from_sequences([[1] * 8])).shape == (8, 16)
        with pytest.raises(ValueError, match="9 tokens exceeds the model's limit of 8"):
            backbone(PackedBatch.from_sequences([[1] * 9]))


def test_every_family_and_kernel_has_a_test_file():
    families = {p.stem for p in (ROOT / "embzoo/conversion/families").glob("[!_]*.py")}
    assert families and all((ROOT / f"tests/families/test_{f}.py").is_file() for f in families)
    assert "bert" in {t.replace("-", "") for t in supported_model_types()}
    kernels = {p.stem for p in (ROOT / "embzoo/kernels").glob("[!_]*.py")} - {"dispatch"}
    assert kernels and all((ROOT / f"tests/kernels/test_{k}.py").is_file() for k in kernels)


def test_registry_routes_shared_model_types_by_config_values():
    from embzoo.registry import family_for

    assert family_for({"model_type": "bert"}).__name__.endswith(".bert")
    assert family_for({"model_type": "bert", "position_embedding_type": "absolute"}).__name__.endswith(".bert")
    assert family_for({"model_type": "bert", "position_embedding_type": "alibi"}).__name__.endswith(".jina_bert")
    with pytest.raises(UnsupportedConfig, match="supported model_types"):
        family_for({"model_type": "t5"})


def test_dynamic_ntk_needs_its_trained_length():
    with pytest.raises(UnsupportedConfig, match="rope_original_max >= 1"):
        ArchConfig(**SMALL, positions="rope", rope_scaling="ntk_dynamic", rope_factor=2.0)


def test_rope_backbone_trains():
    """Rotary rotates q/k in place on views of the fused projection; autograd must accept it."""
    backbone = Backbone(ArchConfig(**SMALL, positions="rope", mlp_gated=True, rotary_fraction=0.5))
    h = backbone(PackedBatch.from_sequences([[1, 2, 3], [4, 5]]))
    h.pow(2).sum().backward()
    assert backbone.layers[0].attn.qkv.weight.grad.abs().sum() > 0
