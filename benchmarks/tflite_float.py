"""The float ResNet-20 in TensorFlow Lite with its XNNPack CPU delegate, for the benchmarks' optional
TFLite column (never a dependency: `pip install tensorflow-cpu`).

The same network as `torch_float.resnet20` (basic blocks, option-A shortcuts, BatchNorm + ReLU),
built in Keras, converted to a float32 .tflite model in memory and run by `tf.lite.Interpreter`, which
applies XNNPack to float models by default. `available()` says whether tensorflow imports.
"""
from __future__ import annotations

import os


def available() -> bool:
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # TensorFlow's start-up chatter
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def resnet20(in_channels: int = 1, num_classes: int = 10, size: int = 32):
    """A freshly initialised float32 Keras ResNet-20 on NHWC images."""
    import tensorflow as tf
    layers = tf.keras.layers

    def bn_relu(x, relu=True):
        x = layers.BatchNormalization()(x)
        return layers.ReLU()(x) if relu else x

    def option_a(x, stride, extra):
        return tf.pad(x[:, ::stride, ::stride, :], [[0, 0], [0, 0], [0, 0], [extra // 2, extra - extra // 2]])

    images = tf.keras.Input((size, size, in_channels))
    x = bn_relu(layers.Conv2D(16, 3, padding="same", use_bias=False)(images))
    cin = 16
    for cout, stride in ((16, 1), (32, 2), (64, 2)):
        for i in range(3):
            s = stride if i == 0 else 1
            out = bn_relu(layers.Conv2D(cout, 3, strides=s, padding="same", use_bias=False)(x))
            out = bn_relu(layers.Conv2D(cout, 3, padding="same", use_bias=False)(out), relu=False)
            shortcut = x
            if s != 1 or cin != cout:
                shortcut = layers.Lambda(option_a, arguments={"stride": s, "extra": cout - cin})(x)
            x = layers.ReLU()(layers.Add()([out, shortcut]))
            cin = cout
    logits = layers.Dense(num_classes)(layers.GlobalAveragePooling2D()(x))
    return tf.keras.Model(images, logits)


def inference(in_channels: int = 1, num_classes: int = 10, size: int = 32):
    """A callable running the model on an NCHW float32 NumPy batch with TFLite (XNNPack), on as many
    threads as the Rust kernels use (APB_NUM_THREADS, else every core); one interpreter per batch size."""
    import tensorflow as tf
    threads = int(os.environ.get("APB_NUM_THREADS") or os.cpu_count() or 1)
    model = tf.lite.TFLiteConverter.from_keras_model(resnet20(in_channels, num_classes, size)).convert()
    interpreters = {}  # batch size -> (interpreter, input index, output index)

    def forward(x):
        n = len(x)
        if n not in interpreters:
            it = tf.lite.Interpreter(model_content=model, num_threads=threads)
            it.resize_tensor_input(it.get_input_details()[0]["index"], [n, size, size, in_channels])
            it.allocate_tensors()
            interpreters[n] = (it, it.get_input_details()[0]["index"], it.get_output_details()[0]["index"])
        it, inp, out = interpreters[n]
        it.set_tensor(inp, x.transpose(0, 2, 3, 1).copy())
        it.invoke()
        return it.get_tensor(out)
    return forward
