"""A convolution whose input gradient, where oneDNN computes it slowly, is a forward convolution.

Saliency maps need the gradient with respect to the input, never the weights'. On the CPU, oneDNN's
backward-data kernels work on blocks of 16 output channels (one AVX-512 vector), so a layer with fewer
(LeNet's first convolution has 6) pays for 16: measured on an AVX-512 CPU, 16 / out_channels times the
time of the same arithmetic as a forward convolution, for 1 to 16 input channels, 3x3 and 5x5 kernels, and
within 10% either way from 16 channels up. For a stride-1, ungrouped convolution the input gradient is
exactly that: the output gradient convolved with the kernel flipped in space and with its channel axes
swapped. So such layers with fewer than 16 output channels compute it that way on the CPU.

The rule depends on the layer's shape only, never on a timing, so a run's maps are the same every time;
they differ from torch's own kernel by float32 rounding (the order of the sums). Training (parameters that
require a gradient), GPUs and every other convolution use torch's convolution unchanged.
"""

import torch
import torch.nn.functional as F
from torch import Tensor, nn

FEW_OUTPUT_CHANNELS = 16


class _FlippedInputGradient(torch.autograd.Function):
    """conv2d(x, weight, bias) at stride 1, whose backward gives x's gradient as a forward convolution."""

    @staticmethod
    def forward(
        ctx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        padding: tuple[int, int],
        dilation: tuple[int, int],
        reach: list[int],
    ):  # type: ignore[override]
        ctx.save_for_backward(weight)
        ctx.dilation, ctx.reach = dilation, reach
        return F.conv2d(x, weight, bias, 1, padding, dilation)

    @staticmethod
    def backward(ctx, gradient: Tensor):  # type: ignore[override]
        (weight,) = ctx.saved_tensors
        flipped = weight.transpose(0, 1).flip(2, 3)
        return F.conv2d(gradient, flipped, None, 1, ctx.reach, ctx.dilation), None, None, None, None, None


class Conv2d(nn.Conv2d):
    """``nn.Conv2d`` (same parameters, initializer and name) with the input gradient above."""

    def _conv_forward(self, input: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        reach = self._reach()
        if self._flips_input_gradient(input, weight, bias, reach):
            return _FlippedInputGradient.apply(input, weight, bias, self.padding, self.dilation, reach)
        return super()._conv_forward(input, weight, bias)

    def _reach(self) -> list[int] | None:
        """The padding that makes the flipped kernel's output the input's size (stride 1); None where the
        padding is a mode ('same', 'valid')."""
        if not isinstance(self.padding, tuple):
            return None
        return [
            d * (k - 1) - p for d, k, p in zip(self.dilation, self.kernel_size, self.padding, strict=True)
        ]

    def _flips_input_gradient(
        self, input: Tensor, weight: Tensor, bias: Tensor | None, reach: list[int] | None
    ) -> bool:
        return (
            input.requires_grad
            and torch.is_grad_enabled()
            and input.device.type == "cpu"
            and not weight.requires_grad
            and (bias is None or not bias.requires_grad)
            and self.out_channels < FEW_OUTPUT_CHANNELS
            and self.groups == 1
            and self.stride == (1, 1)
            and self.padding_mode == "zeros"
            and reach is not None
            and min(reach) >= 0
        )
