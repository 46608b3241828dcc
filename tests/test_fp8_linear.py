"""Opt-in FP8 (e4m3) Linear layers: the arithmetic against a float64 reference written from the scheme's definition
(per-output-channel weight scales, per-token activation scales, amax → 448), which layers are swapped, the error
against the bfloat16 load on real and random weights, and the refusals. The CUDA checks are marked gpu."""

import numpy as np
import pytest
import torch
from conftest import TINY_QWEN3, write_st_layout
from torch import nn
from transformers import Qwen3Config, Qwen3Model

import embzoo
from embzoo.modeling import fp8_linear
from embzoo.modeling.fp8_linear import E4M3, Fp8Linear, quantize_rows
from embzoo.modeling.quantized_linear import quantize_linears

TEXTS = [
    "A man is eating food.",
    "A cheetah is running behind its prey.",
    "The new movie is awesome and the actors were great, " * 6,
    "ok",
    "naïve café — déjà vu",
]
# measured on this CPU (torch._scaled_mm with bf16 activations and output): the real MiniLM against its
# bfloat16 load, min cosine 0.9916 / mean 0.9962 over TEXTS (quantized from its float32 weights; 0.9899 from bf16 ones);
# over 256 protocol TEXT texts min 0.9895, mean 0.9958; a random bert-base min 0.9970, a random Qwen3-0.6B shape 0.9870
MINILM_MIN_COS, MINILM_MEAN_COS = 0.985, 0.995


def reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None) -> torch.Tensor:
    """float64 y = deq(x) deq(W)ᵀ + b, each row of x and of W scaled (float32 scales) so that its largest |value| is
    e4m3's 448."""

    def deq(t: torch.Tensor) -> torch.Tensor:
        scale = t.float().abs().amax(dim=1, keepdim=True) / 448.0
        return (t.float() / scale).to(torch.float8_e4m3fn).double() * scale.double()

    y = deq(x) @ deq(weight).T
    return y if bias is None else y + bias.to(torch.bfloat16).double()


def test_quantize_rows_maps_each_rows_max_to_448():
    x = torch.randn(6, 64, dtype=torch.bfloat16) * torch.logspace(-3, 3, 6)[:, None]
    x[2] = 0
    q, scale = quantize_rows(x)
    assert q.dtype == E4M3 and scale.dtype == torch.float32 and scale.shape == (6, 1)
    assert torch.equal(q.float().abs().amax(dim=1)[[0, 1, 3, 4, 5]], torch.full((5,), 448.0))
    assert torch.equal(q[2].float(), torch.zeros(64))
    back = q.float() * scale
    rel = ((back - x.float()).abs() / x.float().abs().clamp(min=1e-30))[x.float().abs() > scale * 2**-6]
    assert rel.max() <= 2**-4  # e4m3 rounds to 3 mantissa bits: at most half a step, 1/16, off for normal values


@pytest.mark.parametrize("bias", [True, False])
def test_fp8_linear_matches_the_dequantized_reference(bias):
    torch.manual_seed(0)
    linear = nn.Linear(64, 48, bias=bias).to(torch.bfloat16)
    layer = Fp8Linear(linear)
    assert layer.weight.dtype == E4M3 and layer.weight_scale.shape == (1, 48)
    x = torch.randn(2, 7, 64, dtype=torch.bfloat16)
    y = layer(x)
    assert y.dtype == torch.bfloat16 and y.shape == (2, 7, 48)
    want = reference(x.reshape(-1, 64), linear.weight, linear.bias).view(2, 7, 48)
    torch.testing.assert_close(y.double(), want, rtol=2**-7, atol=1e-2)
    exact = linear(x).double()
    cos = nn.functional.cosine_similarity(y.double(), exact, dim=-1)
    assert cos.min() > 0.995 and (y.double() - exact).abs().max() > 0  # close to, but not, the bf16 layer
    assert layer(x[:, :0]).shape == (2, 0, 48)  # no tokens


def test_dtype_casts_leave_the_fp8_weights_alone():
    layer = Fp8Linear(nn.Linear(32, 16))
    layer.to(torch.float32).bfloat16().to("cpu")
    assert layer.weight.dtype == E4M3 and layer.weight_scale.dtype == torch.float32
    assert layer.bias.dtype == torch.bfloat16
    nn.Sequential(layer).to("meta", torch.float16)  # a move applies (from the parent too), its dtype does not
    assert [(b.device.type, b.dtype) for b in layer.buffers()] == [
        ("meta", E4M3),
        ("meta", torch.float32),
        ("meta", torch.bfloat16),
    ]


def test_minilm_in_fp8_stays_close_to_bfloat16():
    fp8 = embzoo.load(device="cpu", load_in_fp8=True)
    backbone = fp8.model.backbone
    swapped = {name for name, m in backbone.named_modules() if isinstance(m, Fp8Linear)}
    assert swapped == {f"layers.{i}.{n}" for i in range(6) for n in ("attn.qkv", "attn.out", "mlp.up", "mlp.down")}
    assert not any(type(m) in (nn.Linear, embzoo.modeling.layers.Linear) for m in backbone.modules())
    assert (
        backbone.embed.tok.weight.dtype == torch.bfloat16 and backbone.layers[0].norm_mlp.weight.dtype == torch.bfloat16
    )
    stated = embzoo.load(device="cpu").model.backbone.layers[0].mlp.up.weight  # float32, as its config states
    codes = backbone.layers[0].mlp.up.weight.view(torch.uint8)
    assert torch.equal(codes, quantize_rows(stated)[0].view(torch.uint8))  # quantized once, not via bfloat16
    got, want = fp8.encode(TEXTS), embzoo.load(device="cpu", dtype="bfloat16").encode(TEXTS)
    cos = np.sum(got * want, axis=1)
    print(f"MiniLM fp8 vs bf16: min cosine {cos.min():.5f}, mean {cos.mean():.5f}")
    assert cos.min() >= MINILM_MIN_COS and cos.mean() >= MINILM_MEAN_COS and cos.min() < 1


def test_last_token_embedder_in_fp8(make_checkpoint):
    """A Qwen3-Embedding-like model (sizes multiples of 16), whose last layer runs the pooled tokens only."""
    folder, _ = make_checkpoint(Qwen3Model, Qwen3Config(**TINY_QWEN3 | dict(intermediate_size=64)), noise=0.5)
    write_st_layout(folder, {"word_embedding_dimension": 32, "pooling_mode_lasttoken": True}, True, 64)
    got = embzoo.load(folder, device="cpu", load_in_fp8=True).encode(TEXTS)
    want = embzoo.load(folder, device="cpu", dtype="bfloat16").encode(TEXTS)
    cos = np.sum(got * want, axis=1)
    assert cos.min() > 0.99 and cos.min() < 1


def test_refusals(make_checkpoint, monkeypatch):
    with pytest.raises(ValueError, match="FP8 layers compute in bfloat16; got dtype torch.float16"):
        embzoo.load(device="cpu", load_in_fp8=True, dtype="float16")
    with pytest.raises(ValueError, match="load_in_8bit, load_in_4bit and load_in_fp8 are exclusive"):
        embzoo.load(device="cpu", load_in_fp8=True, load_in_4bit=True)
    with pytest.raises(ValueError, match="not 8/4-bit or FP8 ones"):
        embzoo.load(device="cpu", load_in_fp8=True, adapters={"a": "/nowhere"})
    folder, _ = make_checkpoint(Qwen3Model, Qwen3Config(**TINY_QWEN3 | dict(intermediate_size=36)))
    with pytest.raises(ValueError, match=r"mlp.up is 32 → 72: FP8 matmuls need both sizes to be multiples of 16"):
        embzoo.load(folder, device="cpu", load_in_fp8=True)
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: (8, 0))
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA A100")
    backbone = embzoo.load(device="cpu", dtype="bfloat16").model.backbone
    with pytest.raises(ValueError, match=r"compute capability 8.9\+ .*NVIDIA A100 has 8.0"):
        quantize_linears(backbone, "fp8", torch.bfloat16, "cuda")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_fp8():
    """On CUDA: the fused (compiled) activation quantization agrees with the eager one (a division may round its last
    bit differently: codes one e4m3 step apart at most, and rarely), FP8 layers match the dequantized reference, and
    MiniLM stays within the CPU-measured bounds of its bfloat16 load."""
    x = torch.randn(300, 384, device="cuda", dtype=torch.bfloat16) * 3
    q, scale = fp8_linear._compiled_quantize_rows()(x)
    q_eager, scale_eager = quantize_rows(x)
    torch.testing.assert_close(scale, scale_eager, rtol=1e-6, atol=0)
    steps = (q.view(torch.uint8).int() - q_eager.view(torch.uint8).int()).abs()  # same sign: adjacent codes differ by 1
    assert steps.max() <= 1 and (steps > 0).float().mean() < 1e-3
    linear = nn.Linear(384, 1536).to("cuda", torch.bfloat16)
    y = Fp8Linear(linear).to("cuda")(x)
    torch.testing.assert_close(y.double(), reference(x, linear.weight, linear.bias), rtol=2**-7, atol=1e-2)
    got = embzoo.load(device="cuda", load_in_fp8=True).encode(TEXTS)
    cos = np.sum(got * embzoo.load(device="cuda", dtype="bfloat16").encode(TEXTS), axis=1)
    print(f"cuda MiniLM fp8 vs bf16: min cosine {cos.min():.5f}, mean {cos.mean():.5f}")
    assert cos.min() >= MINILM_MIN_COS and cos.mean() >= MINILM_MEAN_COS
