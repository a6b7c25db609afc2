"""MXResNet: the published size, every depth, width scaling, identity blocks at init, BatchNorm modes."""
import pytest
import torch
from torch import nn

from lie_helpers.training.mxresnet import ResBlock, mxresnet


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_mxresnet18_has_the_published_parameter_count():
    assert n_params(mxresnet(18, n_outputs=40, width=1.0)) == 11_243_976


@pytest.mark.parametrize("depth, expansion", [(18, 1), (34, 1), (50, 4)])
def test_depths_build_and_run(depth, expansion):
    torch.manual_seed(0)
    model = mxresnet(depth, n_outputs=40, width=0.125)
    head = model[-1]
    assert head.in_features == 64 * expansion
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    assert len(blocks) == {18: 8, 34: 16, 50: 16}[depth]
    assert model(torch.randn(2, 3, 32, 32)).shape == (2, 40)


def test_width_scales_every_channel_count_including_the_stem():
    for width in (0.125, 0.25, 0.5):
        model = mxresnet(18, n_outputs=7, width=width)
        convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert [c.out_channels for c in convs[:3]] == [round(32 * width), round(64 * width), round(64 * width)]
        assert model[-1].in_features == round(512 * width)
        assert model[-1].out_features == 7
    assert mxresnet(18, width=0.001)[-1].in_features == 1      # channel counts never drop below 1
    assert n_params(mxresnet(18, width=0.25)) < n_params(mxresnet(18, width=0.5)) < n_params(mxresnet(18))


@pytest.mark.parametrize("size", [16, 17, 33, 48])
def test_any_resolution_from_16(size):
    model = mxresnet(18, width=0.125).eval()
    assert model(torch.randn(1, 3, size, size)).shape == (1, 40)


def test_bias_free_convs_and_kaiming_init():
    torch.manual_seed(0)
    model = mxresnet(18, width=0.5)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            assert m.bias is None
    conv = [m for m in model.modules() if isinstance(m, nn.Conv2d)][-1]
    fan_in = conv.weight[0].numel()
    assert conv.weight.std().item() == pytest.approx((2 / fan_in) ** 0.5, rel=0.1)
    assert torch.equal(model[-1].bias, torch.zeros(40))


@pytest.mark.parametrize("depth", [18, 50])
def test_blocks_start_as_identity(depth):
    """Zero-initialised last BatchNorm: each block's residual branch is exactly zero at init."""
    torch.manual_seed(0)
    model = mxresnet(depth, width=0.125)
    blocks = [m for m in model.modules() if isinstance(m, ResBlock)]
    x = torch.randn(4, blocks[1].convs[0][0].in_channels, 8, 8)
    for train_mode in (True, False):
        blocks[1].train(train_mode)
        assert torch.equal(blocks[1].convs(x), torch.zeros_like(blocks[1].convs(x)))
        assert torch.equal(blocks[1](x), nn.functional.mish(x))   # identity shortcut, then Mish


def test_batchnorm_train_and_eval_modes():
    torch.manual_seed(0)
    model = mxresnet(18, width=0.125)
    x = torch.randn(4, 3, 32, 32)
    bn = model[0][1]
    before = bn.running_mean.clone()
    model.train()
    together = model(x)
    assert not torch.equal(bn.running_mean, before)            # train mode updates running statistics
    assert not torch.allclose(together[:2], model(x[:2]), atol=1e-4)   # and normalises by the batch
    model.eval()
    buffers = {k: v.clone() for k, v in model.state_dict().items()}
    together = model(x)
    assert torch.allclose(together[:1], model(x[:1]), atol=1e-5)      # eval: per example, batch-independent
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in buffers.items())


def test_unknown_depth_or_bad_width_raises():
    with pytest.raises(ValueError, match="depth"):
        mxresnet(101)
    with pytest.raises(ValueError, match="width"):
        mxresnet(18, width=0)
