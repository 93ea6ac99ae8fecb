"""A Flax (nnx) CNN exported to ONNX by jax2onnx, with JAX's own references.

Run with the flax venv's python (see make.sh). The export call:

    jax2onnx.to_onnx(model, [("B", 28, 28, 1)], opset=17, input_names=["image"], output_names=["logits"])

"B" is jax2onnx's symbolic batch dimension, so the ONNX input is [B, 28, 28, 1] (dim_param "B").
Note: jax2onnx 0.17.1 patches nnx.avg_pool during export and its patch takes the window shape only as a
keyword (``nnx.avg_pool(x, (2, 2), strides=(2, 2))`` fails inside to_onnx), hence ``window_shape=``.
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax
import jax.numpy as jnp
import jax2onnx
import numpy as np
import onnx
from flax import nnx

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus

OPSET = 17
VERSIONS = corpus.versions("jax", "jaxlib", "flax", "jax2onnx", "onnx", "onnxruntime", "numpy")


class CNN(nnx.Module):
    """conv1 -> relu -> avg_pool 2x2 -> conv2 -> relu -> avg_pool 2x2 -> flatten -> dense (10 logits).

    nnx.Conv pads "SAME" by default, so the feature maps are 28x28x8, 14x14x16, and 7x7x16 after pooling.
    """

    def __init__(self, rngs: nnx.Rngs):
        self.conv1 = nnx.Conv(1, 8, kernel_size=(3, 3), rngs=rngs)
        self.conv2 = nnx.Conv(8, 16, kernel_size=(3, 3), rngs=rngs)
        self.dense = nnx.Linear(7 * 7 * 16, 10, rngs=rngs)

    def features(self, x):
        """The GradCAM layer's activations: relu(conv2(...)), [N, 14, 14, 16]."""
        x = nnx.relu(self.conv1(x))
        x = nnx.avg_pool(x, window_shape=(2, 2), strides=(2, 2))
        return nnx.relu(self.conv2(x))

    def head(self, a):
        a = nnx.avg_pool(a, window_shape=(2, 2), strides=(2, 2))
        a = a.reshape(a.shape[0], -1)
        return self.dense(a)

    def __call__(self, x):
        return self.head(self.features(x))


def perturb_biases(model: CNN, seed: int) -> None:
    """Seeded non-zero biases, N(0, 0.05) (nnx starts them at zero)."""
    rng = np.random.default_rng(seed)
    for module in (model.conv1, model.conv2, model.dense):
        module.bias[...] = jnp.asarray(rng.normal(0.0, 0.05, module.bias[...].shape), dtype=jnp.float32)


def main() -> None:
    name = "flax_cnn"
    print(f"{name}:")
    model = CNN(nnx.Rngs(61))
    perturb_biases(model, 62)
    x = corpus.probe_images(28, 28, 1, "NHWC")
    xj = jnp.asarray(x)

    logits = np.asarray(model(xj))
    target = np.argmax(logits, axis=1)
    rows = jnp.arange(x.shape[0])

    def score_of_input(inp):
        return model(inp)[rows, target].sum()

    def score_of_features(a):
        return model.head(a)[rows, target].sum()

    gradient = np.asarray(jax.grad(score_of_input)(xj))
    activations = model.features(xj)
    grad_a = np.asarray(jax.grad(score_of_features)(activations))
    if not np.allclose(np.asarray(model.head(activations)), logits, atol=1e-6):
        raise corpus.CorpusError("features/head split does not reproduce the model")
    fd_error = corpus.check_gradient(lambda b: np.asarray(model(jnp.asarray(b))), x, target, gradient)
    cam = corpus.gradcam(np.asarray(activations), grad_a, "NHWC", (28, 28))

    path = corpus.HERE / f"{name}.onnx"
    proto = jax2onnx.to_onnx(
        model,
        [("B", 28, 28, 1)],
        opset=OPSET,
        input_names=["image"],
        output_names=["logits"],
        model_name=name,
    )
    onnx.save(proto, str(path))
    facts = corpus.check_onnx(path, x, logits, logits)
    entry = {
        "framework": "flax",
        "framework_version": f"flax {VERSIONS['flax']} (nnx API), jax {jax.__version__}",
        "exporter": "jax2onnx",
        "exporter_version": VERSIONS["jax2onnx"],
        "export_call": (
            f"jax2onnx.to_onnx(model, [('B', 28, 28, 1)], opset={OPSET}, input_names=['image'], "
            f"output_names=['logits'], model_name='{name}'); onnx.save(proto, path)"
        ),
        **facts,
        "input_layout": "NHWC",
        "dynamic_batch": True,
        "architecture": "flax_cnn",
        "gradcam_layer": "conv2",
        "gradcam_tensor": "nnx.relu(model.conv2(...)): the ReLU output of the module at path 'conv2'",
        "gradcam_feature_shape": list(activations.shape[1:]),
        "gradcam_feature_layout": "NHWC",
        "ends_with_softmax": False,
        "non_relu_nonlinearities": [],
        "onnx_nodes_near_gradcam_layer": corpus.onnx_nodes_containing(path, "conv2"),
        "gradient_fd_rel_error": fd_error,
        "versions": VERSIONS,
        "notes": (
            "flax.nnx modules conv1, conv2 (nnx.Conv, SAME padding), dense (nnx.Linear); "
            "nnx.avg_pool 2x2; seeded init (nnx.Rngs(61)) and N(0, 0.05) biases."
        ),
    }
    corpus.write_model(
        name, x=x, logits=logits, probabilities=logits, gradient=gradient, gradcam_maps=cam, entry=entry
    )


if __name__ == "__main__":
    main()
