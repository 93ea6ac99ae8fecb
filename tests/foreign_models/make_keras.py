"""Keras 3 (TensorFlow backend) classifiers exported to ONNX by tf2onnx, with Keras's own references.

Run with the keras venv's python (see make.sh). For every model: build it with seeded weights (BatchNorm
statistics perturbed where the model is called "trained"), compute on the probe images the pre-softmax
logits, the model's output, tf.GradientTape's input gradient of the target logit and GradCAM from the
named layer's activations and tf.GradientTape gradients, export with tf2onnx, check the file with
onnxruntime, write <name>.npz and its manifest entry.

tf2onnx.convert.from_keras does not work with Keras 3 (tf2onnx 1.17.0 fails with KeyError on the
model's output KerasTensor names), so each model is exported through a tf.function:

    spec = (tf.TensorSpec((None, H, W, C), tf.float32, name="image"),)
    serve = tf.function(lambda image: model(image, training=False), input_signature=spec)
    tf2onnx.convert.from_function(serve, input_signature=spec, opset=OPSET, output_path=...,
                                  inputs_as_nchw=None or ["image"])
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "0")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import keras
import numpy as np
import tensorflow as tf
import tf2onnx
from keras import layers

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import corpus

OPSET = 15
VERSIONS = corpus.versions("tensorflow-cpu", "keras", "tf2onnx", "onnx", "onnxruntime", "numpy")
FRAMEWORK_VERSION = f"keras {keras.__version__} (tensorflow-cpu {tf.__version__} backend)"


# ------------------------------------------------------------------------------------------ the models


def perturb_batchnorm(model: keras.Model, seed: int) -> None:
    """Seeded "trained" statistics for every BatchNormalization: gamma ~ U(0.5, 1.5), beta ~ N(0, 0.1),
    moving_mean ~ N(0, 0.1), moving_variance ~ U(0.5, 1.5)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            c = layer.moving_mean.shape[0]
            layer.set_weights(
                [
                    rng.uniform(0.5, 1.5, c).astype(np.float32),
                    rng.normal(0.0, 0.1, c).astype(np.float32),
                    rng.normal(0.0, 0.1, c).astype(np.float32),
                    rng.uniform(0.5, 1.5, c).astype(np.float32),
                ]
            )


def perturb_biases(model: keras.Model, seed: int) -> None:
    """Seeded non-zero biases, N(0, 0.05), for every Conv2D and Dense that has one (Keras starts them at 0,
    and tf2onnx then drops the Add)."""
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, (layers.Conv2D, layers.Dense)) and getattr(layer, "bias", None) is not None:
            layer.bias.assign(rng.normal(0.0, 0.05, layer.bias.shape).astype(np.float32))


def cnn(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = keras.Sequential(
        [
            keras.Input((28, 28, 1), name="image"),
            layers.Conv2D(8, 3, activation="relu", name="conv2d_1"),
            layers.MaxPool2D(name="max_pooling2d_1"),
            layers.Conv2D(16, 3, activation="relu", name="conv2d_2"),
            layers.MaxPool2D(name="max_pooling2d_2"),
            layers.Flatten(name="flatten"),
            layers.Dense(10, name="dense"),
        ],
        name="cnn",
    )
    perturb_biases(model, seed + 2)
    return model


def bn_softmax(seed: int, trained: bool) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", name="conv2d_1")(inputs)
    x = layers.BatchNormalization(name="batch_normalization_1")(x)
    x = layers.ReLU(name="re_lu_1")(x)
    x = layers.MaxPool2D(name="max_pooling2d_1")(x)
    x = layers.Conv2D(16, 3, padding="same", name="conv2d_2")(x)
    x = layers.BatchNormalization(name="batch_normalization_2")(x)
    x = layers.ReLU(name="re_lu_2")(x)
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    outputs = layers.Dense(10, activation="softmax", name="dense")(x)
    model = keras.Model(inputs, outputs, name="bn_softmax")
    if trained:
        perturb_batchnorm(model, seed + 1)
        perturb_biases(model, seed + 2)
    return model


def residual(seed: int) -> keras.Model:
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same", activation="relu", name="stem_conv")(inputs)
    # block 1: identity shortcut
    y = layers.Conv2D(8, 3, padding="same", name="block1_conv1")(x)
    y = layers.BatchNormalization(name="block1_bn1")(y)
    y = layers.ReLU(name="block1_relu1")(y)
    y = layers.Conv2D(8, 3, padding="same", name="block1_conv2")(y)
    y = layers.BatchNormalization(name="block1_bn2")(y)
    x = layers.Add(name="block1_add")([x, y])
    x = layers.ReLU(name="block1_out")(x)
    # block 2: downsampling, strided 1x1 conv shortcut
    y = layers.Conv2D(16, 3, strides=2, padding="same", name="block2_conv1")(x)
    y = layers.BatchNormalization(name="block2_bn1")(y)
    y = layers.ReLU(name="block2_relu1")(y)
    y = layers.Conv2D(16, 3, padding="same", name="block2_conv2")(y)
    y = layers.BatchNormalization(name="block2_bn2")(y)
    s = layers.Conv2D(16, 1, strides=2, name="block2_shortcut")(x)
    s = layers.BatchNormalization(name="block2_shortcut_bn")(s)
    x = layers.Add(name="block2_add")([s, y])
    x = layers.ReLU(name="block2_out")(x)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    outputs = layers.Dense(10, name="predictions")(x)
    model = keras.Model(inputs, outputs, name="residual")
    perturb_batchnorm(model, seed + 1)
    perturb_biases(model, seed + 2)
    return model


def mobilenet_like(seed: int) -> keras.Model:
    """MobileNetV2 in miniature (Keras's own layer names), with one hard-swish (MobileNetV3's)."""
    keras.utils.set_random_seed(seed)
    inputs = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(8, 3, strides=2, padding="same", use_bias=False, name="Conv1")(inputs)
    x = layers.BatchNormalization(name="bn_Conv1")(x)
    x = layers.ReLU(6.0, name="Conv1_relu")(x)  # 16x16x8
    # block 1: inverted residual, stride 1, identity shortcut
    y = layers.Conv2D(24, 1, use_bias=False, name="block_1_expand")(x)
    y = layers.BatchNormalization(name="block_1_expand_BN")(y)
    y = layers.ReLU(6.0, name="block_1_expand_relu")(y)
    y = layers.DepthwiseConv2D(3, padding="same", use_bias=False, name="block_1_depthwise")(y)
    y = layers.BatchNormalization(name="block_1_depthwise_BN")(y)
    y = layers.ReLU(6.0, name="block_1_depthwise_relu")(y)
    y = layers.Conv2D(8, 1, use_bias=False, name="block_1_project")(y)
    y = layers.BatchNormalization(name="block_1_project_BN")(y)
    x = layers.Add(name="block_1_add")([x, y])
    # block 2: stride 2 as MobileNetV2 writes it: ZeroPadding2D then a 'valid' depthwise conv
    y = layers.Conv2D(24, 1, use_bias=False, name="block_2_expand")(x)
    y = layers.BatchNormalization(name="block_2_expand_BN")(y)
    y = layers.Activation(keras.activations.hard_swish, name="block_2_expand_hswish")(y)
    y = layers.ZeroPadding2D(padding=((0, 1), (0, 1)), name="block_2_pad")(y)
    y = layers.DepthwiseConv2D(3, strides=2, padding="valid", use_bias=False, name="block_2_depthwise")(y)
    y = layers.BatchNormalization(name="block_2_depthwise_BN")(y)
    y = layers.ReLU(6.0, name="block_2_depthwise_relu")(y)
    y = layers.Conv2D(16, 1, use_bias=False, name="block_2_project")(y)
    x = layers.BatchNormalization(name="block_2_project_BN")(y)  # 8x8x16
    x = layers.Conv2D(32, 1, use_bias=False, name="Conv_1")(x)
    x = layers.BatchNormalization(name="Conv_1_bn")(x)
    x = layers.ReLU(6.0, name="out_relu")(x)  # 8x8x32, the last feature map
    x = layers.GlobalAveragePooling2D(name="global_average_pooling2d")(x)
    outputs = layers.Dense(10, name="predictions")(x)
    model = keras.Model(inputs, outputs, name="mobilenet_like")
    perturb_batchnorm(model, seed + 1)
    perturb_biases(model, seed + 2)
    return model


# -------------------------------------------------------------------------------------- the references


def references(model: keras.Model, x_nhwc: np.ndarray, layer_name: str) -> dict:
    """Keras's own logits, output, input gradient and GradCAM (NHWC arrays) on ``x_nhwc``.

    The pre-softmax logits are the last Dense's kernel and bias applied to its input (for a Dense
    without activation that is its output), so the softmax models get their logits too.
    """
    dense = model.layers[-1]
    if not isinstance(dense, layers.Dense):
        raise corpus.CorpusError(f"{model.name}: the last layer is not a Dense")
    taps = keras.Model(model.inputs, [model.get_layer(layer_name).output, dense.input])

    def logits_of(features):
        return tf.matmul(features, dense.kernel) + dense.bias

    xt = tf.constant(x_nhwc)
    output = model(xt, training=False).numpy()
    logits = logits_of(taps(xt, training=False)[1]).numpy()
    target = np.argmax(logits, axis=1)
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(xt)
        activations, features = taps(xt, training=False)
        z = logits_of(features)
        score = tf.reduce_sum(tf.gather(z, target, axis=1, batch_dims=1))
    grad_x, grad_a = tape.gradient(score, [xt, activations])
    del tape
    if not np.allclose(z.numpy(), logits, atol=1e-6):
        raise corpus.CorpusError(f"{model.name}: logits differ between passes")

    def logits_fn(batch):
        return logits_of(taps(tf.constant(batch), training=False)[1]).numpy()

    fd_error = corpus.check_gradient(logits_fn, x_nhwc, target, grad_x.numpy())
    cam = corpus.gradcam(activations.numpy(), grad_a.numpy(), "NHWC", x_nhwc.shape[1:3])
    return {
        "logits": logits,
        "probabilities": output,
        "gradient": grad_x.numpy(),
        "gradcam": cam,
        "fd_error": fd_error,
        "gradcam_feature_shape": list(activations.shape[1:]),
    }


def export(model: keras.Model, name: str, nchw: bool) -> str:
    h, w, c = model.inputs[0].shape[1:]
    spec = (tf.TensorSpec((None, h, w, c), tf.float32, name="image"),)
    serve = tf.function(lambda image: model(image, training=False), input_signature=spec)
    path = corpus.HERE / f"{name}.onnx"
    tf2onnx.convert.from_function(
        serve,
        input_signature=spec,
        opset=OPSET,
        output_path=str(path),
        inputs_as_nchw=["image"] if nchw else None,
    )
    return (
        "tf2onnx.convert.from_function(tf.function(lambda image: model(image, training=False), "
        f"input_signature=(tf.TensorSpec((None, {h}, {w}, {c}), tf.float32, name='image'),)), "
        f"input_signature=<same>, opset={OPSET}" + (", inputs_as_nchw=['image']" if nchw else "") + ")"
    )


def make(
    model: keras.Model,
    name: str,
    *,
    architecture: str,
    layer: str,
    nchw: bool = False,
    non_relu: list[str] | None = None,
    notes: str = "",
    refs: dict | None = None,
) -> dict:
    print(f"{name}:")
    h, w, c = model.inputs[0].shape[1:]
    x_nhwc = corpus.probe_images(h, w, c, "NHWC")
    refs = refs or references(model, x_nhwc, layer)
    call = export(model, name, nchw)
    layout = "NCHW" if nchw else "NHWC"
    x = corpus.to_nchw(x_nhwc, "NHWC") if nchw else x_nhwc
    gradient = corpus.to_nchw(refs["gradient"], "NHWC") if nchw else refs["gradient"]
    path = corpus.HERE / f"{name}.onnx"
    facts = corpus.check_onnx(path, x, refs["probabilities"], refs["logits"])
    ends_with_softmax = getattr(model.layers[-1].activation, "__name__", "") == "softmax"
    entry = {
        "framework": "keras",
        "framework_version": FRAMEWORK_VERSION,
        "exporter": "tf2onnx",
        "exporter_version": tf2onnx.__version__,
        "export_call": call,
        **facts,
        "input_layout": layout,
        "architecture": architecture,
        "gradcam_layer": layer,
        "gradcam_feature_shape": refs["gradcam_feature_shape"],
        "gradcam_feature_layout": "NHWC",
        "ends_with_softmax": bool(ends_with_softmax),
        "non_relu_nonlinearities": non_relu or [],
        "onnx_nodes_near_gradcam_layer": corpus.onnx_nodes_containing(path, layer),
        "gradient_fd_rel_error": refs["fd_error"],
        "keras_parameters": int(model.count_params()),
        "versions": VERSIONS,
        "notes": notes,
    }
    corpus.write_model(
        name,
        x=x,
        logits=refs["logits"],
        probabilities=refs["probabilities"],
        gradient=gradient,
        gradcam_maps=refs["gradcam"],
        entry=entry,
    )
    return refs


def main() -> None:
    model = cnn(seed=11)
    refs = make(
        model,
        "keras_cnn_nhwc",
        architecture="keras_cnn",
        layer="conv2d_2",
        notes="Sequential; GradCAM reads conv2d_2's output (its ReLU is the layer's activation).",
    )
    make(
        model,
        "keras_cnn_nchw",
        architecture="keras_cnn",
        layer="conv2d_2",
        nchw=True,
        refs=refs,
        notes="The same Keras model object as keras_cnn_nhwc, exported with inputs_as_nchw=['image'].",
    )
    make(
        bn_softmax(seed=21, trained=True),
        "keras_bn_softmax",
        architecture="keras_bn_softmax",
        layer="re_lu_2",
        notes="BatchNormalization gamma/beta/moving stats set to seeded random values.",
    )
    make(
        bn_softmax(seed=31, trained=False),
        "keras_bn_softmax_untrained",
        architecture="keras_bn_softmax",
        layer="re_lu_2",
        notes="Same architecture and layer names as keras_bn_softmax; freshly initialized "
        "(BatchNormalization at gamma 1, beta 0, mean 0, variance 1; other conv/dense seeds).",
    )
    make(
        residual(seed=41),
        "keras_residual",
        architecture="keras_residual",
        layer="block2_out",
        notes="Two residual blocks (identity shortcut, then a strided 1x1 conv shortcut); perturbed BN.",
    )
    make(
        mobilenet_like(seed=51),
        "keras_mobilenet_like",
        architecture="keras_mobilenet_like",
        layer="out_relu",
        non_relu=["relu6", "hard_swish"],
        notes="MobileNetV2-style: ReLU6, inverted residual with DepthwiseConv2D, ZeroPadding2D before a "
        "stride-2 'valid' depthwise conv; block_2_expand_hswish is keras.activations.hard_swish; "
        "perturbed BN.",
    )
    mnv2 = keras.applications.MobileNetV2(alpha=0.35, input_shape=(32, 32, 3), weights=None, classes=10)
    print(
        f"keras_mobilenetv2 skipped: keras.applications.MobileNetV2(alpha=0.35, classes=10) has "
        f"{mnv2.count_params()} parameters, over 1 MB as float32"
    )


if __name__ == "__main__":
    main()
