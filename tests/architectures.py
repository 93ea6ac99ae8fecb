"""Small image classifiers built from the blocks of the architectures people ship.

torchvision and timm cannot be installed beside the CPU torch of the test environment, so each family is
written here from its defining blocks, small enough to export and audit in seconds: ResNet (basic block
with a downsampling shortcut), MobileNetV3 (depthwise conv, ReLU6, HardSwish, squeeze-excitation),
EfficientNet (SiLU, squeeze-excitation), DenseNet (concatenation, BatchNorm before ReLU and conv),
Inception (parallel branches, concatenation), ConvNeXt (7x7 depthwise conv, LayerNorm over channels,
GELU, layer scale) and ViT (patch embedding, class token, position embedding, multi-head attention).
"""

import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from workers.engine.onnx_import import OnnxGraphModule, onnx_to_torch

IMAGE_SIZE = 32
CLASSES = 5


class BasicBlock(nn.Module):
    """torchvision's ResNet basic block: two 3x3 convs, a 1x1 shortcut where the shape changes."""

    def __init__(self, inputs: int, outputs: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inputs, outputs, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(outputs)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(outputs, outputs, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(outputs)
        self.downsample = (
            nn.Sequential(nn.Conv2d(inputs, outputs, 1, stride, bias=False), nn.BatchNorm2d(outputs))
            if stride != 1 or inputs != outputs
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class TinyResNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.relu = nn.ReLU()
        self.maxpool = nn.MaxPool2d(2)
        self.layer1 = nn.Sequential(BasicBlock(8, 8, 1))
        self.layer2 = nn.Sequential(BasicBlock(8, 16, 2))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer2(self.layer1(x))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class SqueezeExcitation(nn.Module):
    """Channel gating: the block's output is multiplied by a sigmoid of its own pooled activations."""

    def __init__(self, channels: int, squeezed: int, gate: Callable[[Tensor], Tensor]) -> None:
        super().__init__()
        self.fc1 = nn.Conv2d(channels, squeezed, 1)
        self.fc2 = nn.Conv2d(squeezed, channels, 1)
        self.gate = gate

    def forward(self, x: Tensor) -> Tensor:
        scale = self.fc2(F.relu(self.fc1(F.adaptive_avg_pool2d(x, 1))))
        return x * self.gate(scale)


class InvertedResidual(nn.Module):
    def __init__(self, channels: int, expanded: int, activation: type[nn.Module], gate: Callable) -> None:
        super().__init__()
        self.expand = nn.Sequential(nn.Conv2d(channels, expanded, 1, bias=False), nn.BatchNorm2d(expanded))
        self.depthwise = nn.Sequential(
            nn.Conv2d(expanded, expanded, 3, 1, 1, groups=expanded, bias=False), nn.BatchNorm2d(expanded)
        )
        self.activation = activation()
        self.se = SqueezeExcitation(expanded, max(1, expanded // 4), gate)
        self.project = nn.Sequential(nn.Conv2d(expanded, channels, 1, bias=False), nn.BatchNorm2d(channels))

    def forward(self, x: Tensor) -> Tensor:
        out = self.activation(self.depthwise(self.activation(self.expand(x))))
        return x + self.project(self.se(out))


class TinyMobileNetV3(nn.Module):
    """ReLU6 and HardSwish activations, hard-sigmoid squeeze-excitation."""

    def __init__(self, activation: type[nn.Module] = nn.Hardswish, gate: Callable = F.hardsigmoid) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.block = InvertedResidual(8, 16, activation, gate)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(torch.flatten(F.adaptive_avg_pool2d(self.block(self.stem(x)), 1), 1))


class TinyEfficientNet(TinyMobileNetV3):
    """SiLU activations and sigmoid squeeze-excitation, as EfficientNet-B0 has."""

    def __init__(self) -> None:
        super().__init__(activation=nn.SiLU, gate=torch.sigmoid)
        self.stem[2] = nn.SiLU()


class DenseLayer(nn.Module):
    """BatchNorm, ReLU, then conv, on the concatenation of every earlier feature map."""

    def __init__(self, inputs: int, growth: int) -> None:
        super().__init__()
        self.norm = nn.BatchNorm2d(inputs)
        self.relu = nn.ReLU()
        self.conv = nn.Conv2d(inputs, growth, 3, 1, 1, bias=False)

    def forward(self, features: list[Tensor]) -> Tensor:
        return self.conv(self.relu(self.norm(torch.cat(features, 1))))


class TinyDenseNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv0 = nn.Conv2d(3, 8, 3, 2, 1, bias=False)
        self.norm0 = nn.BatchNorm2d(8)
        self.dense1 = DenseLayer(8, 4)
        self.dense2 = DenseLayer(12, 4)
        self.norm5 = nn.BatchNorm2d(16)
        self.relu5 = nn.ReLU()
        self.classifier = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        features = [F.relu(self.norm0(self.conv0(x)))]
        features.append(self.dense1(features))
        features.append(self.dense2(features))
        out = self.relu5(self.norm5(torch.cat(features, 1)))
        return self.classifier(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class ConvBnRelu(nn.Sequential):
    def __init__(self, inputs: int, outputs: int, kernel: int) -> None:
        super().__init__(
            nn.Conv2d(inputs, outputs, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(),
        )


class TinyInception(nn.Module):
    """One Inception block: 1x1, 3x3, 5x5 and pooled branches concatenated."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = ConvBnRelu(3, 8, 3)
        self.pool = nn.MaxPool2d(2)
        self.branch1x1 = ConvBnRelu(8, 4, 1)
        self.branch3x3 = nn.Sequential(ConvBnRelu(8, 4, 1), ConvBnRelu(4, 4, 3))
        self.branch5x5 = nn.Sequential(ConvBnRelu(8, 2, 1), ConvBnRelu(2, 4, 5))
        self.branch_pool = ConvBnRelu(8, 4, 1)
        self.mixed = nn.Identity()  # names the concatenation, GradCAM's conventional layer
        self.fc = nn.Linear(16, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(self.stem(x))
        pooled = F.avg_pool2d(x, 3, 1, 1)
        branches = [self.branch1x1(x), self.branch3x3(x), self.branch5x5(x), self.branch_pool(pooled)]
        out = self.mixed(torch.cat(branches, 1))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


class ChannelsLayerNorm(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW tensor, as ConvNeXt's downsampling layers apply it."""

    def forward(self, x: Tensor) -> Tensor:
        out = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias, self.eps)
        return out.permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dwconv = nn.Conv2d(channels, channels, 7, padding=3, groups=channels)
        self.norm = nn.LayerNorm(channels, eps=1e-6)
        self.pwconv1 = nn.Linear(channels, 4 * channels)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * channels, channels)
        self.layer_scale = nn.Parameter(torch.full((channels,), 0.5))

    def forward(self, x: Tensor) -> Tensor:
        out = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        out = self.layer_scale * self.pwconv2(self.act(self.pwconv1(out)))
        return x + out.permute(0, 3, 1, 2)


class TinyConvNeXt(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 4, 4), ChannelsLayerNorm(8, eps=1e-6))
        self.stage = ConvNeXtBlock(8)
        self.norm = nn.LayerNorm(8, eps=1e-6)
        self.head = nn.Linear(8, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stage(self.stem(x))
        return self.head(self.norm(x.mean((-2, -1))))


class EncoderBlock(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=1e-6)
        self.self_attention = nn.MultiheadAttention(width, heads, batch_first=True)
        self.ln_2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(nn.Linear(width, 2 * width), nn.GELU(), nn.Linear(2 * width, width))

    def forward(self, x: Tensor) -> Tensor:
        y = self.ln_1(x)
        x = x + self.self_attention(y, y, y, need_weights=False)[0]
        return x + self.mlp(self.ln_2(x))


class TinyViT(nn.Module):
    """torchvision's ViT in miniature: 8x8 patches, a class token and learned position embeddings."""

    def __init__(self, width: int = 16, patch: int = 8) -> None:
        super().__init__()
        self.patch = patch
        self.conv_proj = nn.Conv2d(3, width, patch, patch)
        tokens = (IMAGE_SIZE // patch) ** 2 + 1
        self.class_token = nn.Parameter(torch.randn(1, 1, width) * 0.02)
        self.pos_embedding = nn.Parameter(torch.randn(1, tokens, width) * 0.02)
        self.encoder = EncoderBlock(width, heads=2)
        self.ln = nn.LayerNorm(width, eps=1e-6)
        self.head = nn.Linear(width, CLASSES)

    def forward(self, x: Tensor) -> Tensor:
        x = self.conv_proj(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.class_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embedding
        return self.head(self.ln(self.encoder(x))[:, 0])


@dataclass(frozen=True)
class Architecture:
    name: str
    build: Callable[[], nn.Module]
    relu_only: bool  # every nonlinearity is a ReLU: Guided Backprop is defined
    gradcam_layer: str  # the module whose output GradCAM reads by default
    class_tokens: int = 0  # a transformer's leading tokens, dropped before the patch grid


ARCHITECTURES = [
    Architecture("resnet", TinyResNet, True, "layer2.0"),
    Architecture("mobilenet_v3", TinyMobileNetV3, False, "block"),
    Architecture("efficientnet", TinyEfficientNet, False, "block"),
    Architecture("densenet", TinyDenseNet, True, "relu5"),
    Architecture("inception", TinyInception, True, "mixed"),
    Architecture("convnext", TinyConvNeXt, False, "stage"),
    Architecture("vit", TinyViT, False, "encoder", class_tokens=1),
]

FORMATS = ("onnx_legacy", "onnx_dynamo", "torchscript", "pt2")
_SUFFIX = {"onnx_legacy": ".onnx", "onnx_dynamo": ".onnx", "torchscript": ".ts", "pt2": ".pt2"}


def random_weights(architecture: Architecture, seed: int = 0) -> nn.Module:
    """Random weights, normalization statistics and affines that differ from layer to layer (an exporter
    may merge identical initializers into one, which would make untouched layers look shared)."""
    torch.manual_seed(seed)
    model = architecture.build()
    with torch.no_grad():
        for name, tensor in [*model.named_parameters(), *model.named_buffers()]:
            if name.endswith("running_var"):
                tensor.uniform_(0.5, 1.5)
            elif name.endswith("running_mean") or name.endswith("bias"):
                tensor.uniform_(-0.2, 0.2)
            elif (name.endswith("weight") and tensor.dim() == 1) or "scale" in name:
                tensor.uniform_(0.5, 1.5)
    return model.eval()


def export(model: nn.Module, fmt: str, folder: Path, example: Tensor) -> Path:
    """Write ``model`` in one of FORMATS with a dynamic batch dimension."""
    path = folder / f"model_{fmt}{_SUFFIX[fmt]}"
    batch = torch.export.Dim("batch", min=1)
    if fmt == "onnx_legacy":
        _legacy_onnx(model, example, path)
    elif fmt == "onnx_dynamo":
        torch.onnx.export(
            model, (example,), path, dynamo=True, input_names=["input"], output_names=["logits"],
            dynamic_shapes=({0: batch},), external_data=False, verbose=False,
        )  # fmt: skip
    elif fmt == "torchscript":
        torch.jit.script(model).save(str(path))
    else:
        torch.export.save(torch.export.export(model, (example,), dynamic_shapes=({0: batch},)), path)
    return path


def converted(model: nn.Module, example: Tensor) -> OnnxGraphModule:
    """``model`` as every audit sees it: exported to ONNX in memory and rebuilt by the engine's converter."""
    buffer = io.BytesIO()
    _legacy_onnx(model.eval(), example, buffer)
    return onnx_to_torch(onnx.load_model_from_string(buffer.getvalue()))


def _legacy_onnx(model: nn.Module, example: Tensor, target: Path | io.BytesIO) -> None:
    """torch's TorchScript-based ONNX exporter at opset 17, batch dimension dynamic."""
    torch.onnx.export(
        model, (example,), target, dynamo=False, opset_version=17, input_names=["input"],
        output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )  # fmt: skip
