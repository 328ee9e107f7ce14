"""The U-Net of Ronneberger, Fischer & Brox (2015) and its shape arithmetic.

The network follows the paper: a contracting path of two unpadded ("valid")
3x3 convolutions, each followed by a ReLU, and a 2x2 max-pooling per level with
the number of channels doubling; an expanding path of 2x2 up-convolutions that
halve the channels, concatenation with the centre crop of the contracting
feature map of the same level, and two 3x3 convolutions with ReLU; a final 1x1
convolution to the class scores. Dropout sits at the end of the contracting
path and weights are He-normal initialised (standard deviation sqrt(2 / N),
N the number of inputs of one output unit).

With valid convolutions the output is smaller than the input by a constant
border, and only some input sizes are allowed: every feature map that is
max-pooled must have an even size. :class:`UNetConfig` answers these questions
without building the network.

Examples
--------
>>> import torch
>>> from napari_unet.model import UNet, UNetConfig
>>> config = UNetConfig(base_channels=64)          # the paper's network
>>> config.output_shape((572, 572))
(388, 388)
>>> config.input_shape_for((388, 388))
(572, 572)
>>> net = UNet(UNetConfig(base_channels=4, depth=2))
>>> net(torch.zeros(1, 1, 44, 44)).shape
torch.Size([1, 2, 4, 4])
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Literal

import torch
from torch import nn

__all__ = ["UNet", "UNetConfig"]

Padding = Literal["valid", "same"]


#: Upper bounds of the architecture (the paper: 1 input channel, 2 classes, 64 base channels).
LIMITS = {"in_channels": 64, "n_classes": 256, "base_channels": 256}
#: Channels of the bottom layer, base_channels * 2**depth (the paper's: 1024).
MAX_WIDEST_LAYER = 4096


@dataclass(frozen=True)
class UNetConfig:
    """Architecture of a :class:`UNet`.

    Parameters
    ----------
    in_channels : int
        Number of image channels (1 for grey, 3 for RGB).
    n_classes : int
        Number of output classes (2 for background/foreground).
    depth : int
        Number of 2x2 max-poolings (4 in the paper).
    base_channels : int
        Feature channels of the first level; doubled at every level. The paper
        uses 64 (31 M parameters). The default of 16 (1.9 M parameters) trains
        about 8x faster per step on a CPU, which suits interactive use; see the
        user guide for the measured figures.
    padding : {"valid", "same"}
        "valid" (as in the paper) shrinks every 3x3 convolution's output by two
        pixels, so the output is smaller than the input and tiles need border
        context; "same" keeps the size.
    batch_norm : bool
        Add batch normalisation after every 3x3 convolution (not in the paper).
    dropout : float
        Dropout probability at the end of the contracting path (0 to disable).
    """

    in_channels: int = 1
    n_classes: int = 2
    depth: int = 4
    base_channels: int = 16
    padding: Padding = "valid"
    batch_norm: bool = False
    dropout: float = 0.5

    def __post_init__(self) -> None:
        for name in ("in_channels", "n_classes", "depth", "base_channels"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}.")
        if self.n_classes < 2:
            raise ValueError(
                f"n_classes must be at least 2 (background and one class), got {self.n_classes}."
            )
        if self.depth > 7:
            raise ValueError(f"depth must be between 1 and 7, got {self.depth}.")
        # Bounds checked before any weight is allocated: a model file is untrusted input,
        # and a few bytes of config could otherwise ask for hundreds of gigabytes.
        for name, largest in LIMITS.items():
            if getattr(self, name) > largest:
                raise ValueError(
                    f"{name} must be at most {largest}, got {getattr(self, name)}; a model "
                    "file asking for more is damaged or not made by this program."
                )
        widest = self.base_channels * 2**self.depth
        if widest > MAX_WIDEST_LAYER:
            raise ValueError(
                f"base_channels * 2**depth must be at most {MAX_WIDEST_LAYER} (the paper's "
                f"64 * 2**4 = 1024), got {self.base_channels} * 2**{self.depth} = {widest}; "
                "choose fewer base channels or a smaller depth."
            )
        if self.padding not in ("valid", "same"):
            raise ValueError(f'padding must be "valid" or "same", got {self.padding!r}.')
        if not 0.0 <= float(self.dropout) < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout!r}.")

    def to_dict(self) -> dict[str, object]:
        """Return the configuration as a plain dictionary (for checkpoints)."""
        return asdict(self)

    # -- shape arithmetic ------------------------------------------------------------

    @property
    def size_step(self) -> int:
        """Spacing of valid input sizes along an axis (2**depth)."""
        return 2**self.depth

    @property
    def border(self) -> int:
        """Pixels lost on each side of the input (0 for "same" padding).

        The valid network's output is ``input - 2 * border`` along each axis
        (92 for depth 4: 572 -> 388).
        """
        if self.padding == "same":
            return 0
        return (12 * 2**self.depth - 8) // 2

    def _axis_output(self, size: int) -> int | None:
        """Output length of one axis, or None when ``size`` is not valid."""
        if self.padding == "same":
            return size if size > 0 and size % self.size_step == 0 else None
        for _ in range(self.depth):
            size -= 4
            if size <= 0 or size % 2:
                return None
            size //= 2
        size -= 4  # the bottleneck's two convolutions
        if size <= 0:
            return None
        for _ in range(self.depth):
            size = 2 * size - 4
        return size if size > 0 else None

    def _smallest_axis_input(self, wanted_output: int) -> int:
        """Smallest valid input length whose output is at least ``wanted_output``."""
        step = self.size_step
        if self.padding == "same":
            return max(1, math.ceil(wanted_output / step)) * step
        # Invert the recursion: a bottleneck output of b pixels comes from an
        # input of step * (b + 4) + 4 * (step - 1) and gives an output of
        # step * b - 4 * (step - 1).
        lost = 4 * (step - 1)
        bottleneck = max(math.ceil((max(wanted_output, 1) + lost) / step), 1)
        return step * (bottleneck + 4) + lost

    def _first_valid_from(self, size: int) -> int:
        while self._axis_output(size) is None:
            size += 1
        return size

    def _nearest_valid(self, size: int) -> tuple[int | None, int]:
        """Return the valid input lengths just below (None if none) and at or above ``size``."""
        above = self._first_valid_from(max(size, 1))
        below = above - self.size_step
        return (below if self._axis_output(below) is not None else None), above

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial output shape for a spatial input shape (height, width).

        Raises
        ------
        ValueError
            If an axis is not a valid input size; the message proposes the
            nearest valid sizes.
        """
        result = []
        for axis, size in zip(("height", "width"), _spatial(input_shape), strict=True):
            output = self._axis_output(size)
            if output is None:
                below, above = self._nearest_valid(size)
                nearest = f"{below} or {above}" if below is not None else f"{above}"
                raise ValueError(
                    f"Input {axis} {size} is not valid for this U-Net (depth {self.depth}, "
                    f"{self.padding} padding): use {nearest}. Valid sizes are "
                    f"{self.size_step} apart; the smallest is {self.min_input_size}."
                )
            result.append(output)
        return tuple(result)

    def input_shape_for(self, output_shape: Sequence[int]) -> tuple[int, ...]:
        """Smallest valid spatial input shape whose output covers ``output_shape``."""
        shape = _spatial(output_shape)
        if any(size < 1 for size in shape):
            raise ValueError(f"output_shape must be positive, got {tuple(output_shape)}.")
        return tuple(self._smallest_axis_input(size) for size in shape)

    @property
    def min_input_size(self) -> int:
        """Smallest valid input length along an axis."""
        return self._smallest_axis_input(1)


def _spatial(shape: Sequence[int]) -> tuple[int, int]:
    if len(shape) != 2:
        raise ValueError(f"A spatial shape is (height, width), got {tuple(shape)}.")
    return int(shape[0]), int(shape[1])


class _DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each followed by (batch norm and) a ReLU."""

    def __init__(self, in_channels: int, out_channels: int, config: UNetConfig) -> None:
        padding = 1 if config.padding == "same" else 0
        layers: list[nn.Module] = []
        for channels in (in_channels, out_channels):
            layers.append(
                nn.Conv2d(channels, out_channels, 3, padding=padding, bias=not config.batch_norm)
            )
            if config.batch_norm:
                layers.append(nn.BatchNorm2d(out_channels))
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


def _center_crop(features: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Crop the centre of ``features`` to ``height`` x ``width`` (the paper's skip crop)."""
    top = (features.shape[-2] - height) // 2
    left = (features.shape[-1] - width) // 2
    return features[..., top : top + height, left : left + width]


class UNet(nn.Module):
    """U-Net of Ronneberger, Fischer & Brox (2015).

    Parameters
    ----------
    config : UNetConfig, optional
        The architecture; the default is a depth-4, 16-channel valid U-Net for
        one-channel images and two classes.

    Notes
    -----
    The forward pass takes a ``(N, in_channels, H, W)`` float tensor whose
    spatial size is valid (see :meth:`UNetConfig.output_shape`) and returns
    ``(N, n_classes, h, w)`` class scores (logits) for the centre of the input.
    """

    def __init__(self, config: UNetConfig | None = None) -> None:
        super().__init__()
        self.config = config if config is not None else UNetConfig()
        channels = [self.config.base_channels * 2**level for level in range(self.config.depth + 1)]
        self.down = nn.ModuleList()
        previous = self.config.in_channels
        for width in channels[:-1]:
            self.down.append(_DoubleConv(previous, width, self.config))
            previous = width
        self.pool = nn.MaxPool2d(2)
        self.bottleneck = _DoubleConv(channels[-2], channels[-1], self.config)
        self.dropout = nn.Dropout(self.config.dropout)
        self.upconv = nn.ModuleList()
        self.up = nn.ModuleList()
        for level in reversed(range(self.config.depth)):
            self.upconv.append(nn.ConvTranspose2d(channels[level + 1], channels[level], 2, 2))
            self.up.append(_DoubleConv(2 * channels[level], channels[level], self.config))
        self.head = nn.Conv2d(channels[0], self.config.n_classes, 1)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """He-normal initialisation: weights ~ N(0, 2 / N), biases 0.

        N is the number of inputs feeding one output unit: ``9 * in_channels``
        for a 3x3 convolution (the paper's example: 9 * 64 = 576), and
        ``in_channels`` for the 2x2 up-convolution with stride 2, whose outputs
        each see a single input position.
        """
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                fan_in = module.in_channels * module.kernel_size[0] * module.kernel_size[1]
            elif isinstance(module, nn.ConvTranspose2d):
                fan_in = module.in_channels
            else:
                continue
            nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_in))
            if module.bias is not None:
                nn.init.zeros_(module.bias)

    @property
    def n_conv_layers(self) -> int:
        """Number of convolution layers (Conv2d and ConvTranspose2d); 23 at depth 4."""
        return sum(isinstance(module, (nn.Conv2d, nn.ConvTranspose2d)) for module in self.modules())

    def output_shape(self, input_shape: Sequence[int]) -> tuple[int, ...]:
        """Spatial output shape for a spatial input shape; see :class:`UNetConfig`."""
        return self.config.output_shape(input_shape)

    def input_shape_for(self, output_shape: Sequence[int]) -> tuple[int, ...]:
        """Smallest valid input shape for a wanted output; see :class:`UNetConfig`."""
        return self.config.input_shape_for(output_shape)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return class scores (logits) for the centre of ``x``."""
        if x.ndim != 4 or x.shape[1] != self.config.in_channels:
            raise ValueError(
                f"Expected a tensor of shape (N, {self.config.in_channels}, H, W), "
                f"got {tuple(x.shape)}."
            )
        self.config.output_shape(x.shape[-2:])  # raises with the nearest valid size
        skips = []
        for block in self.down:
            x = block(x)
            skips.append(x)
            x = self.pool(x)
        x = self.dropout(self.bottleneck(x))
        for upconv, block, skip in zip(self.upconv, self.up, reversed(skips), strict=True):
            x = upconv(x)
            x = torch.cat([_center_crop(skip, x.shape[-2], x.shape[-1]), x], dim=1)
            x = block(x)
        return self.head(x)
