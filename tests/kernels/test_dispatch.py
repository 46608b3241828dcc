"""Implementation selection: EMBZOO_KERNELS, the use() context manager, and "auto" on CPU."""

import pytest
import torch

import embzoo.kernels as K
from embzoo.kernels import dispatch


@pytest.fixture(autouse=True)
def _no_env_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(dispatch.ENV_VAR, raising=False)


def _fail(*args: object, **kwargs: object) -> None:
    raise AssertionError("the Triton implementation was called")


def test_default_is_auto() -> None:
    assert dispatch.current() == "auto"


@pytest.mark.parametrize("name", ["auto", "triton", "reference"])
def test_env_var(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, name)
    assert dispatch.current() == name


def test_env_var_unknown(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, "cuda")
    with pytest.raises(ValueError, match="auto, triton, reference"):
        dispatch.current()


def test_context_manager_overrides_env_and_nests(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(dispatch.ENV_VAR, "reference")
    with K.use("triton"):
        assert dispatch.current() == "triton"
        with K.use("auto"):
            assert dispatch.current() == "auto"
        assert dispatch.current() == "triton"
    assert dispatch.current() == "reference"


def test_context_manager_restores_after_error() -> None:
    with pytest.raises(RuntimeError), K.use("reference"):
        raise RuntimeError("boom")
    assert dispatch.current() == "auto"


def test_unknown_name() -> None:
    with pytest.raises(ValueError, match="auto, triton, reference"), K.use("cuda"):
        pass


def test_auto_on_cpu_uses_reference(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("unpad_triton", "pad_triton", "segment_pool_triton"):
        monkeypatch.setattr(K, name, _fail)
    cu = torch.tensor([0, 2, 3], dtype=torch.int32)
    x = torch.randn(2, 2, 4)
    packed = K.unpad(x, cu)
    assert K.pad(packed, cu, 2).shape == (2, 2, 4)
    assert K.segment_pool(packed, cu, "mean").shape == (2, 4)
    assert not dispatch.use_triton(x)


def test_forced_triton_routes_to_triton(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(K, "segment_pool_triton", _fail)
    with K.use("triton"), pytest.raises(AssertionError, match="Triton implementation was called"):
        K.segment_pool(torch.randn(3, 4), torch.tensor([0, 3], dtype=torch.int32), "mean")


def test_forced_triton_on_cpu_needs_interpreter(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with K.use("triton"), pytest.raises(RuntimeError, match="TRITON_INTERPRET"):
        dispatch.use_triton(torch.zeros(1))


def test_autograd_takes_the_reference_because_triton_kernels_have_no_backward(monkeypatch):
    x = torch.randn(4, 3, requires_grad=True)
    with K.use("triton"):
        assert dispatch.use_triton(x.detach())
        with pytest.raises(RuntimeError, match="no backward"):
            dispatch.use_triton(x)
        with torch.no_grad():
            assert dispatch.use_triton(x)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    assert dispatch.use_triton(x.detach()) and not dispatch.use_triton(x)  # auto on "CUDA"
