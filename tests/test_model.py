import itertools
import math

import pytest
import torch
from torch import nn

from napari_unet.model import UNet, UNetConfig


def test_paper_network_shapes_and_layer_count():
    config = UNetConfig(base_channels=64, depth=4)
    assert config.output_shape((572, 572)) == (388, 388)
    assert config.input_shape_for((388, 388)) == (572, 572)
    net = UNet(config)
    # 18 valid 3x3 convolutions, 4 up-convolutions and the 1x1 output layer.
    assert net.n_conv_layers == 23
    assert sum(isinstance(m, nn.ConvTranspose2d) for m in net.modules()) == 4
    assert sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in net.modules()) == 18
    channels = [m.out_channels for m in net.modules() if isinstance(m, nn.Conv2d)]
    assert max(channels) == 1024


def test_forward_shape_matches_shape_arithmetic():
    net = UNet(UNetConfig(base_channels=4, depth=3, n_classes=3)).eval()
    height, width = 108, 92
    with torch.inference_mode():
        out = net(torch.randn(2, 1, height, width))
    assert out.shape == (2, 3, *net.output_shape((height, width)))
    assert net.output_shape((height, width)) == (height - 88, width - 88)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
def test_valid_sizes_are_spaced_by_two_to_the_depth(depth):
    config = UNetConfig(depth=depth)
    valid = [size for size in range(1, 800) if config._axis_output(size) is not None]
    assert valid[0] == config.min_input_size
    assert all(b - a == 2**depth for a, b in itertools.pairwise(valid))
    for size in valid:
        assert config.output_shape((size, size))[0] == size - 2 * config.border


@pytest.mark.parametrize("wanted", [1, 5, 16, 100, 387, 388, 389])
def test_input_shape_for_is_smallest_covering_input(wanted):
    config = UNetConfig(depth=4)
    size = config.input_shape_for((wanted, wanted))[0]
    assert config.output_shape((size, size))[0] >= wanted
    smaller = size - config.size_step
    if smaller >= config.min_input_size:
        assert config.output_shape((smaller, smaller))[0] < wanted


def test_invalid_size_proposes_nearest_valid_sizes():
    config = UNetConfig(depth=4)
    with pytest.raises(ValueError, match=r"height 570 .* use 556 or 572"):
        config.output_shape((570, 572))
    with pytest.raises(ValueError, match=r"width 100 .* use 188.*smallest is 188"):
        config.output_shape((572, 100))
    net = UNet(UNetConfig(base_channels=2, depth=2))
    with pytest.raises(ValueError, match="use 44 or 48"):
        net(torch.zeros(1, 1, 46, 44))
    with pytest.raises(ValueError, match=r"\(N, 1, H, W\)"):
        net(torch.zeros(1, 3, 44, 44))


def test_same_padding_keeps_size():
    config = UNetConfig(base_channels=4, depth=3, padding="same")
    net = UNet(config).eval()
    assert config.border == 0
    with torch.inference_mode():
        assert net(torch.zeros(1, 1, 64, 40)).shape[-2:] == (64, 40)
    with pytest.raises(ValueError, match="use 64 or 72"):
        config.output_shape((70, 64))
    assert config.input_shape_for((70, 9)) == (72, 16)


def test_he_initialisation_std():
    torch.manual_seed(0)
    net = UNet(UNetConfig(base_channels=32, depth=3))
    for module in net.modules():
        if isinstance(module, nn.Conv2d) and module.kernel_size == (3, 3):
            expected = math.sqrt(2.0 / (9 * module.in_channels))
        elif isinstance(module, nn.ConvTranspose2d):
            expected = math.sqrt(2.0 / module.in_channels)
        else:
            continue
        if module.weight.numel() < 5000:
            continue
        assert module.weight.std().item() == pytest.approx(expected, rel=0.05)
        assert module.weight.mean().item() == pytest.approx(0.0, abs=expected * 0.05)
        assert torch.count_nonzero(module.bias) == 0


def test_dropout_at_end_of_contracting_path_only_in_training():
    net = UNet(UNetConfig(base_channels=4, depth=2, dropout=0.5))
    dropouts = [m for m in net.modules() if isinstance(m, nn.Dropout)]
    assert len(dropouts) == 1 and dropouts[0].p == 0.5
    x = torch.randn(1, 1, 44, 44)
    net.eval()
    with torch.inference_mode():
        assert torch.equal(net(x), net(x))
    net.train()
    torch.manual_seed(1)
    first = net(x)
    torch.manual_seed(2)
    assert not torch.equal(first, net(x))


def test_batch_norm_option_and_multichannel_input():
    net = UNet(UNetConfig(in_channels=3, base_channels=4, depth=2, batch_norm=True))
    assert sum(isinstance(m, nn.BatchNorm2d) for m in net.modules()) == 10
    assert net(torch.randn(2, 3, 44, 44)).shape == (2, 2, 4, 4)


def test_crop_and_concatenate_uses_skip_features():
    # Zeroing the skip connection's features must change the output: the
    # expanding path really sees the cropped contracting feature maps.
    net = UNet(UNetConfig(base_channels=4, depth=1, dropout=0.0)).eval()
    x = torch.randn(1, 1, 20, 20)
    with torch.inference_mode():
        reference = net(x)
        net.up[0][0].weight[:, :4] = 0
        assert not torch.allclose(reference, net(x))


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"in_channels": 0}, "in_channels must be a positive integer"),
        ({"n_classes": 1}, "n_classes must be at least 2"),
        ({"depth": 0}, "depth must be a positive integer"),
        ({"depth": 9}, "depth must be between 1 and 7"),
        ({"base_channels": 2.5}, "base_channels must be a positive integer"),
        ({"padding": "full"}, 'padding must be "valid" or "same"'),
        ({"dropout": 1.0}, r"dropout must be in \[0, 1\)"),
    ],
)
def test_bad_config_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        UNetConfig(**kwargs)


def test_bad_shape_arguments():
    config = UNetConfig()
    with pytest.raises(ValueError, match=r"\(height, width\)"):
        config.output_shape((1, 572, 572))
    with pytest.raises(ValueError, match="output_shape must be positive"):
        config.input_shape_for((0, 10))


def test_config_round_trips_through_dict():
    config = UNetConfig(in_channels=3, n_classes=4, base_channels=8, batch_norm=True)
    assert UNetConfig(**config.to_dict()) == config
