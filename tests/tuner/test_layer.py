import pytest
import torch
from torch import nn

from peft_skip.tuner.layer import SkipLayer


@pytest.mark.parametrize(
    "make", [lambda: nn.Linear(6, 5), lambda: nn.Linear(6, 5, bias=False), lambda: nn.LayerNorm(6)]
)
def test_forward_computes_with_the_tuned_copy(make):
    torch.manual_seed(0)
    base = make()
    layer = SkipLayer(base, "default", init_weights=False)
    x = torch.randn(3, 4, 6)
    expected = make()
    with torch.no_grad():
        for name, param in expected.named_parameters():
            assert not torch.equal(layer.skip_tuned["default"][name], getattr(base, name))
            param.copy_(layer.skip_tuned["default"][name])
    torch.testing.assert_close(layer(x), expected(x))
    deltas = layer.get_delta_weight("default")
    torch.testing.assert_close(deltas["weight"], layer.skip_tuned["default"]["weight"] - base.weight)


def test_other_modules_run_through_functional_call():
    torch.manual_seed(0)
    base = nn.Conv1d(3, 4, 2)
    layer = SkipLayer(base, "default", init_weights=False)
    x = torch.randn(2, 3, 7)
    expected = nn.Conv1d(3, 4, 2)
    with torch.no_grad():
        expected.weight.copy_(layer.skip_tuned["default"]["weight"])
        expected.bias.copy_(layer.skip_tuned["default"]["bias"])
    torch.testing.assert_close(layer(x), expected(x))


def test_zero_init_is_the_base_module_and_the_copy_gets_the_full_gradient():
    base = nn.Linear(4, 3)
    layer = SkipLayer(base, "default")
    x = torch.randn(5, 4)
    torch.testing.assert_close(layer(x), base(x), rtol=0, atol=0)
    layer(x).square().sum().backward()
    base(x).square().sum().backward()
    # The copy gets exactly the gradient full fine-tuning gives W0.
    torch.testing.assert_close(layer.skip_tuned["default"]["weight"].grad, base.weight.grad, rtol=0, atol=0)


def test_merge_and_unmerge_restore_the_base_weights():
    base = nn.LayerNorm(6)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    layer = SkipLayer(base, "default", init_weights=False)
    x = torch.randn(2, 6)
    tuned = layer(x)
    layer.merge()
    assert layer.merged
    torch.testing.assert_close(layer(x), tuned)
    layer.unmerge()
    for key, value in base.state_dict().items():
        torch.testing.assert_close(value, original[key])


def test_safe_merge_refuses_non_finite_deltas():
    layer = SkipLayer(nn.Linear(2, 2), "default")
    with torch.no_grad():
        layer.skip_tuned["default"]["weight"][0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaNs or infinities"):
        layer.merge(safe_merge=True)
    assert not layer.merged


def test_bf16_autocast_on_cpu():
    layer = SkipLayer(nn.Linear(8, 4), "default", init_weights=False)
    x = torch.randn(3, 8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = layer(x)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert layer.skip_tuned["default"]["weight"].grad.dtype == torch.float32


@pytest.mark.filterwarnings("ignore:Already following adapters were merged")
@pytest.mark.parametrize("sequential", [False, True])
def test_merging_several_adapters_computes_what_they_compute_together(sequential):
    torch.manual_seed(0)
    base = nn.Linear(6, 5)
    original = {k: v.clone() for k, v in base.state_dict().items()}
    layer = SkipLayer(base, "a", init_weights=False)
    layer.update_layer("b", init_weights=False)
    layer.set_adapter(["a", "b"])
    x = torch.randn(3, 6)
    together = layer(x)
    if sequential:
        layer.merge(adapter_names=["a"])
        layer.merge(adapter_names=["b"])
    else:
        layer.merge()
    assert layer.merged_adapters == ["a", "b"]
    torch.testing.assert_close(layer(x), together)
    assert not torch.equal(layer.skip_tuned["a"]["weight"], layer.skip_tuned["b"]["weight"])
    layer.unmerge()
    for key, value in base.state_dict().items():
        torch.testing.assert_close(value, original[key], rtol=0, atol=0)
