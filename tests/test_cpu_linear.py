"""embzoo.modeling.layers.Linear: CPU float32 inference through oneDNN's packed weight, against F.linear; the
packed copy follows in-place weight changes and moves; everything else is plain nn.Linear."""

import copy
import io
import pickle

import pytest
import torch
import torch.nn.functional as F

from embzoo.modeling import layers
from embzoo.modeling.layers import PACKED_LINEAR_ENV, Linear

pytestmark = pytest.mark.skipif(not layers._ONEDNN_LINEAR, reason="this torch has no oneDNN packed linear")


@pytest.fixture
def linear():
    torch.manual_seed(0)
    return Linear(24, 40)


@pytest.mark.parametrize("shape", [(7, 24), (3, 5, 24), (0, 24)])
@pytest.mark.parametrize("bias", [True, False])
def test_packed_matches_f_linear(shape, bias):
    torch.manual_seed(1)
    layer = Linear(24, 40, bias=bias)
    x = torch.randn(shape)
    with torch.inference_mode():
        got = layer(x)
    assert layer._packed is not None  # the packed path ran
    torch.testing.assert_close(got, F.linear(x, layer.weight, layer.bias), atol=1e-5, rtol=0)


def test_packed_copy_follows_in_place_changes(linear):
    x = torch.randn(4, 24)
    with torch.no_grad():
        linear(x)
        linear.weight.copy_(linear.weight * 2 + 1)  # a merged adapter changes the weight in place
        got = linear(x)
    torch.testing.assert_close(got, F.linear(x, linear.weight, linear.bias), atol=1e-5, rtol=0)


def test_plain_nn_linear_elsewhere(linear, monkeypatch):
    x = torch.randn(4, 24, requires_grad=True)
    linear(x).sum().backward()  # training: autograd through F.linear
    assert x.grad is not None and linear.weight.grad is not None and linear._packed is None
    with torch.no_grad():
        linear.to(torch.bfloat16)(x.detach().bfloat16())
        assert linear._packed is None
        linear.float()
        monkeypatch.setenv(PACKED_LINEAR_ENV, "0")
        linear(x.detach())
        assert linear._packed is None


def test_moving_or_casting_drops_the_packed_copy(linear):
    with torch.no_grad():
        linear(torch.randn(2, 24))
        assert linear._packed is not None
        linear.double()
    assert linear._packed is None


def test_copies_and_pickles_after_use(linear):
    """deepcopy, torch.save and pickle (Ray, multiprocessing) of a used model: the packed copy stays behind."""
    x = torch.randn(3, 24)
    with torch.inference_mode():
        want = linear(x)
    assert linear._packed is not None
    torch.save(linear, io.BytesIO())
    for other in (copy.deepcopy(linear), pickle.loads(pickle.dumps(linear))):
        assert other._packed is None
        with torch.inference_mode():
            torch.testing.assert_close(other(x), want)
    assert linear._packed is not None


def test_torch_compile_runs_the_plain_linear(linear):
    """Inductor cannot lower oneDNN's packed op: a compiled model (SentenceTransformer.compile) multiplies as nn.Linear
    does, and Inductor packs the weights itself."""
    x = torch.randn(7, 24)
    with torch.inference_mode():
        got = torch.compile(linear)(x)
    torch.testing.assert_close(got, F.linear(x, linear.weight, linear.bias), atol=1e-5, rtol=0)


def test_in_place_writes_to_weights_made_under_inference_mode():
    """An inference tensor tracks no version, so the packed copy could not see an in-place write (a task adapter
    merged into a model loaded under inference_mode): such weights take the plain path."""
    with torch.inference_mode():
        layer = Linear(24, 40)
        x = torch.randn(3, 24)
        assert layer.weight.is_inference()
        layer(x)
        layer.weight.mul_(2)
        torch.testing.assert_close(layer(x), F.linear(x, layer.weight, layer.bias), rtol=1e-5, atol=1e-5)
