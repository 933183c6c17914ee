"""The U-Net: shapes, channel independence and N2V2 options."""

import numpy as np
import pytest
import torch
from torch import nn

from n2v_estimator.nets.unet import UNet
from n2v_estimator.nets.widths import unet_widths

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def net(**kwargs):
    torch.manual_seed(0)
    params = dict(n_filters=4, depth=2)
    params.update(kwargs)
    return UNet(**params).eval()


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 1, 13, 7), (2, 1, 16, 16), (1, 1, 3, 5), (1, 1, 2, 2), (1, 1, 1, 9)])
def test_output_shape_equals_input_shape_in_2d(shape, depth):
    model = net(ndim=2, depth=depth)
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == shape
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("depth", [1, 2, 3])
@pytest.mark.parametrize("shape", [(1, 1, 5, 9, 11), (1, 2, 3, 4, 6), (1, 1, 1, 2, 3)])
def test_output_shape_equals_input_shape_in_3d(shape, depth):
    model = net(ndim=3, depth=depth, in_channels=shape[1])
    with torch.no_grad():
        out = model(torch.randn(shape))
    assert out.shape == shape


def test_output_shape_in_training_mode_with_batch_norm():
    model = net(ndim=2, depth=2, batch_norm=True).train()
    x = torch.randn(3, 1, 11, 13)
    assert model(x).shape == x.shape


def _cross_channel_gradient(model, ndim):
    x = torch.randn((2, 2) + (9, 10, 11)[3 - ndim :], requires_grad=True)
    model(x)[:, 0].sum().backward()
    return x.grad[:, 1]


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("options", [{}, {"blurpool": True}, {"skip_skipone": True}])
def test_independent_channels_output_does_not_depend_on_other_channels(ndim, options):
    model = net(ndim=ndim, in_channels=2, independent_channels=True, **options)
    grad = _cross_channel_gradient(model, ndim)
    assert torch.count_nonzero(grad) == 0


@pytest.mark.parametrize("ndim", [2, 3])
def test_joint_network_mixes_channels(ndim):
    model = net(ndim=ndim, in_channels=2, independent_channels=False)
    grad = _cross_channel_gradient(model, ndim)
    assert torch.count_nonzero(grad) > 0


def test_independent_channels_scales_filters_per_channel():
    joint = net(in_channels=3, n_filters=4)
    independent = net(in_channels=3, n_filters=4, independent_channels=True)
    assert joint.head.in_channels == 4
    assert independent.head.in_channels == 12
    assert independent.head.groups == 3


@pytest.mark.parametrize("ndim, shape", [(2, (2, 1, 15, 12)), (3, (1, 2, 6, 9, 7))])
@pytest.mark.parametrize(
    "options",
    [{"skip_skipone": True}, {"blurpool": True}, {"blurpool": True, "skip_skipone": True}],
)
def test_n2v2_options_build_and_run(ndim, shape, options):
    model = net(ndim=ndim, in_channels=shape[1], **options)
    x = torch.randn(shape, requires_grad=True)
    out = model(x)
    assert out.shape == shape
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_skip_skipone_drops_the_top_level_skip_connection():
    with_skip = net(depth=2, n_filters=4)
    without = net(depth=2, n_filters=4, skip_skipone=True)
    # the top decoder block takes its input from below only
    assert without.up[-1][0].in_channels == with_skip.up[-1][0].in_channels - 4


def test_blurpool_replaces_max_pooling():
    model = net(depth=2, blurpool=True)
    assert not any(isinstance(m, nn.MaxPool2d) for m in model.modules())
    assert net(depth=2).pool[0].__class__ is nn.MaxPool2d


def test_blurpool_kernel_is_fixed_and_not_saved():
    model = net(depth=2, blurpool=True).train()
    kernels = [pool.kernel.clone() for pool in model.pool]
    assert not any("kernel" in name for name in model.state_dict())
    assert not any("kernel" in name for name, _ in model.named_parameters())
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    model(torch.randn(2, 1, 16, 16)).pow(2).mean().backward()
    optimizer.step()
    for pool, before in zip(model.pool, kernels):
        assert torch.equal(pool.kernel, before)
        assert pool.kernel.sum(dim=(-2, -1)).allclose(torch.ones(1))  # a normalised blur


@pytest.mark.parametrize("ndim, shape", [(2, (2, 2, 13, 10)), (3, (1, 1, 5, 7, 6))])
def test_residual_with_zeroed_head_returns_the_input(ndim, shape):
    model = net(ndim=ndim, in_channels=shape[1], residual=True)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        x = torch.randn(shape)
        out = model(x)
    assert torch.equal(out, x)


def test_non_residual_with_zeroed_head_returns_zero():
    model = net(residual=False)
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.zero_()
        out = model(torch.randn(1, 1, 8, 8))
    assert torch.count_nonzero(out) == 0


@pytest.mark.parametrize("ndim", [2, 3])
def test_batch_norm_false_has_no_batch_norm_modules(ndim):
    model = net(ndim=ndim, batch_norm=False, depth=3)
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())
    convs = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Conv3d))]
    assert all(c.bias is not None for c in convs)


def test_batch_norm_true_has_batch_norm_modules():
    model = net(batch_norm=True, depth=2)
    assert sum(isinstance(m, nn.BatchNorm2d) for m in model.modules()) > 0
    assert not any(isinstance(m, nn.BatchNorm3d) for m in model.modules())


@pytest.mark.parametrize("layout", ["n2v-estimator", "n2v-tf"])
@pytest.mark.parametrize("options", [{}, {"skip_skipone": True}, {"independent_channels": True, "in_channels": 2}])
def test_the_blocks_have_the_widths_unet_widths_says(layout, options):
    model = net(depth=3, layout=layout, **options)
    widths = unet_widths(model.description)
    built = [model.down[level] for level in range(3)] + [model.bottom] + [model.up[2 - level] for level in range(3)]
    for block, said in zip(built, [*widths.down, widths.bottom, *widths.up]):
        first, second = (layer for layer in block if isinstance(layer, nn.Conv2d))
        assert (first.in_channels, first.out_channels, second.out_channels) == (said.inputs, said.middle, said.outputs)
    assert model.head.in_channels == widths.levels[0]


def test_n2v_tf_widens_the_bottom_and_narrows_the_decoders():
    widths = unet_widths(net(depth=2, n_filters=4, layout="n2v-tf").description)
    assert widths.levels == (4, 8)
    assert widths.bottom.middle == 4 * 2**2
    assert [block.middle for block in widths.up] == [4, 4]


def test_output_is_translation_equivariant_on_the_pooling_grid():
    # A fully convolutional net: shifting the input by 2**depth shifts the output,
    # away from the borders.
    model = net(depth=2, batch_norm=False)
    x = torch.randn(1, 1, 96, 96)
    with torch.no_grad():
        a = model(x)[..., 40:56, 40:56]
        b = model(torch.roll(x, shifts=(4, 8), dims=(2, 3)))[..., 44:60, 48:64]
    np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-4, atol=1e-5)
