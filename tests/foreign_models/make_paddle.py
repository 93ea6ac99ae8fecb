"""A MobileNet-like PaddlePaddle classifier exported to ONNX by paddle2onnx, with Paddle's own references.

Run with the paddle venv's python (see make.sh). The export call:

    paddle.onnx.export(model, "<dir>/paddle_mobilenet_like",
                       input_spec=[paddle.static.InputSpec([None, 3, 32, 32], "float32", "image")],
                       opset_version=13)

paddle.onnx.export saves a static (PIR) program in a temporary folder and runs paddle2onnx on it, which
then folds constants with Polygraphy (its default optimize_tool; it needs onnx_graphsurgeon and sympy,
installed by make.sh so that Polygraphy does not try to pip-install them itself).
"""

from __future__ import annotations

import os
import sys
import warnings

warnings.filterwarnings("ignore", message="No ccache found")

import numpy as np  # noqa: E402
import paddle  # noqa: E402
import paddle.nn.functional as F  # noqa: E402
import paddle2onnx  # noqa: E402
from paddle import nn  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus  # noqa: E402

OPSET = 13
VERSIONS = corpus.versions("paddlepaddle", "paddle2onnx", "onnx", "onnxruntime", "numpy")


class MobileNetLike(nn.Layer):
    """conv1 + bn1 + Hardswish (stride 2) -> depthwise dw + bn2 + ReLU -> 1x1 pw + bn3 -> pool -> fc
    -> softmax.

    GradCAM reads bn3's output ([N, 16, 16, 16]): the last conv block's output before the pooling.
    """

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2D(3, 8, 3, stride=2, padding=1, bias_attr=False)
        self.bn1 = nn.BatchNorm2D(8)
        self.act1 = nn.Hardswish()
        self.dw = nn.Conv2D(8, 8, 3, padding=1, groups=8, bias_attr=False)
        self.bn2 = nn.BatchNorm2D(8)
        self.act2 = nn.ReLU()
        self.pw = nn.Conv2D(8, 16, 1, bias_attr=False)
        self.bn3 = nn.BatchNorm2D(16)
        self.pool = nn.AdaptiveAvgPool2D(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(16, 10)

    def features(self, x):
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.act2(self.bn2(self.dw(x)))
        return self.bn3(self.pw(x))

    def head(self, a):
        """Pre-softmax logits from the GradCAM layer's activations."""
        return self.fc(self.flatten(self.pool(a)))

    def forward(self, x):
        return F.softmax(self.head(self.features(x)), axis=-1)


def perturb(model: MobileNetLike, seed: int) -> None:
    """Seeded "trained" BatchNorm2D (gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1), mean ~ N(0, 0.1),
    variance ~ U(0.5, 1.5)) and an N(0, 0.05) bias for fc."""
    rng = np.random.default_rng(seed)
    for bn in (model.bn1, model.bn2, model.bn3):
        c = bn.weight.shape[0]
        bn.weight.set_value(rng.uniform(0.5, 1.5, c).astype(np.float32))
        bn.bias.set_value(rng.normal(0.0, 0.1, c).astype(np.float32))
        bn._mean.set_value(rng.normal(0.0, 0.1, c).astype(np.float32))
        bn._variance.set_value(rng.uniform(0.5, 1.5, c).astype(np.float32))
    model.fc.bias.set_value(rng.normal(0.0, 0.05, 10).astype(np.float32))


def main() -> None:
    name = "paddle_mobilenet_like"
    print(f"{name}:")
    paddle.set_device("cpu")
    paddle.seed(71)
    model = MobileNetLike()
    perturb(model, 72)
    model.eval()

    x = corpus.probe_images(32, 32, 3, "NCHW")
    with paddle.no_grad():
        probabilities = model(paddle.to_tensor(x)).numpy()
        logits = model.head(model.features(paddle.to_tensor(x))).numpy()
    target = np.argmax(logits, axis=1)
    onehot = paddle.to_tensor(np.eye(10, dtype=np.float32)[target])

    xt = paddle.to_tensor(x, stop_gradient=False)
    activations = model.features(xt)
    z = model.head(activations)
    score = (z * onehot).sum()
    grad_x, grad_a = paddle.grad([score], [xt, activations])
    if not np.allclose(z.numpy(), logits, atol=1e-6):
        raise corpus.CorpusError("features/head split does not reproduce the model")

    def logits_fn(batch):
        with paddle.no_grad():
            return model.head(model.features(paddle.to_tensor(batch))).numpy()

    fd_error = corpus.check_gradient(logits_fn, x, target, grad_x.numpy())
    cam = corpus.gradcam(activations.numpy(), grad_a.numpy(), "NCHW", (32, 32))

    prefix = str(corpus.HERE / name)
    spec = [paddle.static.InputSpec([None, 3, 32, 32], "float32", "image")]
    paddle.onnx.export(model, prefix, input_spec=spec, opset_version=OPSET)
    path = corpus.HERE / f"{name}.onnx"
    facts = corpus.check_onnx(path, x, probabilities, logits)
    layer_paths = {id(sub): p for p, sub in model.named_sublayers()}
    entry = {
        "framework": "paddle",
        "framework_version": f"paddlepaddle {paddle.__version__}",
        "exporter": "paddle2onnx",
        "exporter_version": paddle2onnx.__version__,
        "export_call": (
            "paddle.onnx.export(model, 'tests/foreign_models/paddle_mobilenet_like', "
            "input_spec=[paddle.static.InputSpec([None, 3, 32, 32], 'float32', 'image')], "
            f"opset_version={OPSET})"
        ),
        **facts,
        "input_layout": "NCHW",
        "dynamic_batch": True,
        "architecture": "paddle_mobilenet_like",
        "gradcam_layer": layer_paths[id(model.bn3)],
        "gradcam_layer_full_name": model.bn3.full_name(),
        "gradcam_tensor": "output of the BatchNorm2D at sublayer path 'bn3' (after the 1x1 conv 'pw')",
        "gradcam_feature_shape": list(activations.shape[1:]),
        "gradcam_feature_layout": "NCHW",
        "ends_with_softmax": True,
        "non_relu_nonlinearities": ["hard_swish"],
        "onnx_nodes_near_gradcam_layer": (
            corpus.onnx_nodes_containing(path, "bn3")
            + corpus.onnx_nodes_containing(path, model.bn3.full_name())
        ),
        "gradient_fd_rel_error": fd_error,
        "paddle_sublayers": {p: sub.full_name() for p, sub in model.named_sublayers()},
        "versions": VERSIONS,
        "notes": (
            "paddle.seed(71) init; BatchNorm2D statistics and fc bias seeded random; the softmax "
            "(paddle.nn.functional.softmax) is inside the exported forward."
        ),
    }
    corpus.write_model(
        name,
        x=x,
        logits=logits,
        probabilities=probabilities,
        gradient=grad_x.numpy(),
        gradcam_maps=cam,
        entry=entry,
    )


if __name__ == "__main__":
    main()
