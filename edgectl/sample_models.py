"""Small real ONNX models built on the spot, for the demo, the tests and the benchmarks (needs the `onnx` package)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protocol.compat import zip_strict


def _save(model, path: Path) -> Path:
    import onnx

    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


def _graph_model(graph, opset: int = 17):
    from onnx import helper

    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="edgefleet")
    model.ir_version = 8  # readable by every supported ONNX Runtime
    return model


def mlp(path: Path, n_in: int = 16, hidden: int = 64, n_out: int = 4, seed: int = 0, pad_mb: float = 0.0) -> Path:
    """Classifier MLP: x[N, n_in] -> probs[N, n_out] (softmax); `pad_mb` widens it to a file size."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    if pad_mb > 0:  # widen the hidden layer so the file reaches roughly pad_mb megabytes
        hidden = max(hidden, int(pad_mb * (1 << 20) / 4 / (n_in + n_out + 1)))
    w1 = (rng.standard_normal((n_in, hidden)) / np.sqrt(n_in)).astype(np.float32)
    b1 = (rng.standard_normal(hidden) * 0.1).astype(np.float32)
    w2 = (rng.standard_normal((hidden, n_out)) / np.sqrt(hidden)).astype(np.float32)
    b2 = (rng.standard_normal(n_out) * 0.1).astype(np.float32)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h0"]),
        helper.make_node("Add", ["h0", "b1"], ["h1"]),
        helper.make_node("Relu", ["h1"], ["h2"]),
        helper.make_node("MatMul", ["h2", "w2"], ["l0"]),
        helper.make_node("Add", ["l0", "b2"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n_in])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_out])],
        inits,
    )
    return _save(_graph_model(graph), path)


def scaled_sum(path: Path) -> Path:
    """Two inputs, one an int64 scalar: x[N, 4] float, k int64 scalar -> y = x * k, total = sum(y) per row."""
    from onnx import TensorProto, helper

    nodes = [
        helper.make_node("Cast", ["k"], ["kf"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["x", "kf"], ["y"]),
        helper.make_node("ReduceSum", ["y", "axes"], ["total"], keepdims=0),
    ]
    axes = helper.make_tensor("axes", TensorProto.INT64, [1], [1])
    graph = helper.make_graph(
        nodes,
        "scaled_sum",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("k", TensorProto.INT64, []),
        ],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 4]),
            helper.make_tensor_value_info("total", TensorProto.FLOAT, ["batch"]),
        ],
        [axes],
    )
    return _save(_graph_model(graph), path)


def _conv_net_weights(channels: int, n_out: int, seed: int) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((channels, 3, 3, 3)) / np.sqrt(27)).astype(np.float32)
    w2 = (rng.standard_normal((channels * 2, channels, 3, 3)) / np.sqrt(9 * channels)).astype(np.float32)
    b1 = (rng.standard_normal(channels) * 0.1).astype(np.float32)
    b2 = (rng.standard_normal(channels * 2) * 0.1).astype(np.float32)
    wf = (rng.standard_normal((channels * 2, n_out)) / np.sqrt(channels * 2)).astype(np.float32)
    return w1, b1, w2, b2, wf


def conv_net(path: Path, size: int = 32, channels: int = 16, n_out: int = 10, seed: int = 0) -> Path:
    """Small image classifier: x[N, 3, size, size] -> probs[N, n_out] via two 3x3 convs, global pool and a dense."""
    from onnx import TensorProto, helper, numpy_helper

    w1, b1, w2, b2, wf = _conv_net_weights(channels, n_out, seed)
    inits = [numpy_helper.from_array(a, n) for a, n in ((w1, "w1"), (b1, "b1"), (w2, "w2"), (b2, "b2"), (wf, "wf"))]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], auto_pad="SAME_UPPER"),  # TFLite's SAME padding
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], auto_pad="SAME_UPPER", strides=[2, 2]),
        helper.make_node("Relu", ["c2"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["f"]),
        helper.make_node("MatMul", ["f", "wf"], ["logits"]),
        helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
    ]
    graph = helper.make_graph(
        nodes,
        "conv_net",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", n_out])],
        inits,
    )
    return _save(_graph_model(graph), path)


def control_flow(path: Path, n: int = 8, steps: int = 4) -> Path:
    """A model with `If` and `Loop`: x[N, n] -> y: if sum(x) > 0 then y = x * 2 else y = -x, then `steps` times
    y = tanh(y @ W + y), so runtimes that cannot run control flow fail to load it."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(1)
    w = numpy_helper.from_array((rng.standard_normal((n, n)) / np.sqrt(n)).astype(np.float32), "w")
    two = numpy_helper.from_array(np.array(2.0, np.float32), "two")
    zero = numpy_helper.from_array(np.array(0.0, np.float32), "zero")
    trip = numpy_helper.from_array(np.array(steps, np.int64), "trip")
    cond = numpy_helper.from_array(np.array(True), "cond")
    then_graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["then_out"])],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, None)],
    )
    else_graph = helper.make_graph(
        [helper.make_node("Neg", ["x"], ["else_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, None)],
    )
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("MatMul", ["y_in", "w"], ["m"]),
            helper.make_node("Add", ["m", "y_in"], ["s"]),
            helper.make_node("Tanh", ["s"], ["y_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("y_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("y_out", TensorProto.FLOAT, None),
        ],
    )
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["positive"]),
        helper.make_node("If", ["positive"], ["branch"], then_branch=then_graph, else_branch=else_graph),
        helper.make_node("Loop", ["trip", "cond", "branch"], ["y"], body=body),
    ]
    graph = helper.make_graph(
        nodes,
        "control_flow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", n])],
        [w, two, zero, trip, cond],
    )
    return _save(_graph_model(graph), path)


def tflite_conv_net(path: Path, size: int = 32, channels: int = 16, n_out: int = 10, seed: int = 0) -> Path:
    """The TFLite twin of `conv_net` (NHWC, dynamic batch), written as a flatbuffer with the schema bindings that
    ship in `ai-edge-litert`, so no TensorFlow is needed."""
    import flatbuffers
    from ai_edge_litert import schema_py_generated as fb

    w1, b1, w2, b2, wf = _conv_net_weights(channels, n_out, seed)
    arrays = {  # the same weights as `conv_net`, laid out as TFLite wants them (OHWI filters, [out, in] dense)
        "w1": w1.transpose(0, 2, 3, 1).copy(),
        "b1": b1,
        "w2": w2.transpose(0, 2, 3, 1).copy(),
        "b2": b2,
        "wf": wf.T.copy(),
        "bf": np.zeros(n_out, np.float32),
        "axes": np.array([1, 2], np.int32),
    }
    half = (size + 1) // 2
    buffers = [fb.BufferT()]  # buffer 0 is the empty sentinel
    tensors: list = []
    index: dict[str, int] = {}

    def tensor(name: str, shape: list[int], signature: list[int] | None = None, data=None, kind=fb.TensorType.FLOAT32):
        t = fb.TensorT()
        t.name, t.shape, t.type, t.buffer = name, shape, kind, 0
        if signature:
            t.shapeSignature = signature
        if data is not None:
            b = fb.BufferT()
            b.data = list(np.ascontiguousarray(data).tobytes())
            buffers.append(b)
            t.buffer = len(buffers) - 1
        index[name] = len(tensors)
        tensors.append(t)

    tensor("x", [1, size, size, 3], [-1, size, size, 3])
    for name in ("w1", "b1", "w2", "b2", "wf", "bf"):
        tensor(name, list(arrays[name].shape), data=arrays[name])
    tensor("axes", [2], data=arrays["axes"], kind=fb.TensorType.INT32)
    tensor("c1", [1, size, size, channels], [-1, size, size, channels])
    tensor("c2", [1, half, half, channels * 2], [-1, half, half, channels * 2])
    tensor("g", [1, channels * 2], [-1, channels * 2])
    tensor("logits", [1, n_out], [-1, n_out])
    tensor("probs", [1, n_out], [-1, n_out])

    codes = [fb.BuiltinOperator.CONV_2D, fb.BuiltinOperator.MEAN, fb.BuiltinOperator.FULLY_CONNECTED]
    codes.append(fb.BuiltinOperator.SOFTMAX)
    opcodes = []
    for code in codes:
        oc = fb.OperatorCodeT()
        oc.builtinCode, oc.deprecatedBuiltinCode, oc.version = code, min(code, 127), 1
        opcodes.append(oc)

    def op(code: int, inputs: list[str], outputs: list[str], options_type: int, options) -> fb.OperatorT:
        o = fb.OperatorT()
        o.opcodeIndex = codes.index(code)
        o.inputs, o.outputs = [index[n] for n in inputs], [index[n] for n in outputs]
        o.builtinOptionsType, o.builtinOptions = options_type, options
        return o

    def conv(stride: int):
        c = fb.Conv2DOptionsT()
        c.padding, c.strideW, c.strideH = fb.Padding.SAME, stride, stride
        c.fusedActivationFunction, c.dilationWFactor, c.dilationHFactor = fb.ActivationFunctionType.RELU, 1, 1
        return c

    mean = fb.ReducerOptionsT()
    mean.keepDims = False
    dense = fb.FullyConnectedOptionsT()
    softmax = fb.SoftmaxOptionsT()
    softmax.beta = 1.0
    B = fb.BuiltinOptions
    operators = [
        op(fb.BuiltinOperator.CONV_2D, ["x", "w1", "b1"], ["c1"], B.Conv2DOptions, conv(1)),
        op(fb.BuiltinOperator.CONV_2D, ["c1", "w2", "b2"], ["c2"], B.Conv2DOptions, conv(2)),
        op(fb.BuiltinOperator.MEAN, ["c2", "axes"], ["g"], B.ReducerOptions, mean),
        op(fb.BuiltinOperator.FULLY_CONNECTED, ["g", "wf", "bf"], ["logits"], B.FullyConnectedOptions, dense),
        op(fb.BuiltinOperator.SOFTMAX, ["logits"], ["probs"], B.SoftmaxOptions, softmax),
    ]
    subgraph = fb.SubGraphT()
    subgraph.tensors, subgraph.operators, subgraph.name = tensors, operators, "main"
    subgraph.inputs, subgraph.outputs = [index["x"]], [index["probs"]]
    signature = fb.SignatureDefT()
    signature.signatureKey, signature.subgraphIndex = "serving_default", 0
    signature.inputs = [fb.TensorMapT()]
    signature.inputs[0].name, signature.inputs[0].tensorIndex = "x", index["x"]
    signature.outputs = [fb.TensorMapT()]
    signature.outputs[0].name, signature.outputs[0].tensorIndex = "probs", index["probs"]
    model = fb.ModelT()
    model.version, model.operatorCodes, model.subgraphs, model.buffers = 3, opcodes, [subgraph], buffers
    model.signatureDefs, model.description = [signature], "edgefleet"
    builder = flatbuffers.Builder(1024)
    builder.Finish(model.Pack(builder), file_identifier=b"TFL3")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(builder.Output())
    return path


def classifier_images(n: int, classes: int = 10, size: int = 32, seed: int = 0, prototype_seed: int = 1234) -> tuple:
    """`n` images [n, 3, size, size] of `classes` fixed kinds, and their labels: each class has its own colour and
    its own oriented stripe texture (random phase, contrast and noise per image), as different as real classes are.

    The same `prototype_seed` gives the same classes, so a classifier fitted on one draw generalizes to another
    (`seed`): this is the validation / calibration data of `conv_classifier`.
    """
    proto_rng = np.random.default_rng(prototype_seed)
    colours = proto_rng.normal(0.0, 0.6, (classes, 3))
    angles = proto_rng.uniform(0, np.pi, classes)
    freqs = proto_rng.uniform(0.15, 0.9, classes)
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, classes, n)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64)
    phase = rng.uniform(0, 2 * np.pi, n)[:, None, None]
    along = np.cos(angles[labels])[:, None, None] * xx + np.sin(angles[labels])[:, None, None] * yy
    stripes = np.sin(freqs[labels][:, None, None] * along + phase) * rng.uniform(0.7, 1.3, (n, 1, 1))
    images = colours[labels][:, :, None, None] + stripes[:, None] + rng.normal(0, 0.5, (n, 3, size, size))
    return images.astype(np.float32), labels


def conv_classifier(path: Path, classes: int = 10, size: int = 32, seed: int = 0, opset: int = 17) -> Path:
    """Conv-net image classifier: image[N, 3, size, size] -> probs[N, classes] (softmax).

    Three 3x3 conv + ReLU layers (32, 64, 128 channels, max-pooled), global average pooling and a dense head fitted
    (nearest class mean of the conv features) to the classes of `classifier_images`, so its decisions have real
    margins, as a trained network's do. Needs onnxruntime to compute the features.
    """
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    channels = [3, 32, 64, 128]
    inits, nodes = [], []
    current = "image"
    for i, (c_in, c_out) in enumerate(zip_strict(channels[:-1], channels[1:])):
        w = (rng.standard_normal((c_out, c_in, 3, 3)) * np.sqrt(2.0 / (c_in * 9))).astype(np.float32)
        b = (rng.standard_normal(c_out) * 0.05).astype(np.float32)
        inits += [numpy_helper.from_array(w, f"conv{i}.w"), numpy_helper.from_array(b, f"conv{i}.b")]
        nodes.append(helper.make_node("Conv", [current, f"conv{i}.w", f"conv{i}.b"], [f"conv{i}"], pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"conv{i}"], [f"relu{i}"]))
        current = f"relu{i}"
        if i < len(channels) - 2:
            nodes.append(helper.make_node("MaxPool", [current], [f"pool{i}"], kernel_shape=[2, 2], strides=[2, 2]))
            current = f"pool{i}"
    nodes.append(helper.make_node("GlobalAveragePool", [current], ["gap"]))
    nodes.append(helper.make_node("Flatten", ["gap"], ["features"], axis=1))
    features_graph = helper.make_graph(
        nodes,
        "conv_features",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("features", TensorProto.FLOAT, ["batch", channels[-1]])],
        inits,
    )
    features_model = _graph_model(features_graph, opset)
    session = ort.InferenceSession(features_model.SerializeToString(), providers=["CPUExecutionProvider"])
    images, labels = classifier_images(512, classes, size, seed=seed + 1)
    feats = session.run(["features"], {"image": images})[0].astype(np.float64)
    # nearest class mean on standardized features (a linear head, like a trained one, without the cancellations
    # of a least-squares fit, which quantization noise would flip)
    mean, std = feats.mean(0), np.full(feats.shape[1], feats.std() + 1e-6)  # one scale: no feature blown up
    z = (feats - mean) / std
    centroids = np.stack([z[labels == c].mean(0) for c in range(classes)])  # [classes, features]
    centroids /= np.linalg.norm(centroids, axis=1, keepdims=True)  # equal norms: no bias, logits centred on 0
    logits = z @ centroids.T
    top2 = np.sort(logits, 1)[:, -2:]
    temperature = 8.0 / max(float(np.median(top2[:, 1] - top2[:, 0])), 1e-6)  # median margin of 8 logits
    coef = centroids.T * temperature
    fc_w = (coef / std[:, None]).astype(np.float32)  # fold the standardization into the dense layer
    fc_b = (-(mean / std) @ coef).astype(np.float32)
    inits += [numpy_helper.from_array(fc_w, "fc.w"), numpy_helper.from_array(fc_b, "fc.b")]
    nodes.append(helper.make_node("Gemm", ["features", "fc.w", "fc.b"], ["logits"]))
    nodes.append(helper.make_node("Softmax", ["logits"], ["probs"], axis=-1))
    graph = helper.make_graph(
        nodes,
        "conv_classifier",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, ["batch", 3, size, size])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["batch", classes])],
        inits,
    )
    return _save(_graph_model(graph, opset), path)


def transformer_block(path: Path, seq: int = 16, dim: int = 128, heads: int = 4, ffn: int = 512, seed: int = 0) -> Path:
    """Pre-norm transformer encoder block: x[N, seq, dim] -> y[N, seq, dim] (self-attention + GELU MLP, residuals)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    head_dim = dim // heads

    def weight(name: str, shape: tuple[int, ...]) -> str:
        inits.append(numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(shape[0])).astype(np.float32), name))
        return name

    def const(name: str, array: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(array, name))
        return name

    inits: list = []
    const("ln.scale", np.ones(dim, np.float32))
    const("ln.bias", np.zeros(dim, np.float32))
    const("heads_shape", np.array([0, 0, heads, head_dim], np.int64))
    const("merge_shape", np.array([0, 0, dim], np.int64))
    const("scale", np.array(1.0 / np.sqrt(head_dim), np.float32))
    const("half", np.array(0.5, np.float32))
    const("one", np.array(1.0, np.float32))
    const("inv_sqrt2", np.array(1.0 / np.sqrt(2.0), np.float32))
    n = helper.make_node
    nodes = [n("LayerNormalization", ["x", "ln.scale", "ln.bias"], ["ln1"], axis=-1)]
    for part in ("q", "k", "v"):
        nodes += [
            n("MatMul", ["ln1", weight(f"w{part}", (dim, dim))], [f"{part}0"]),
            n("Reshape", [f"{part}0", "heads_shape"], [f"{part}1"]),
            n("Transpose", [f"{part}1"], [f"{part}h"], perm=[0, 2, 3, 1] if part == "k" else [0, 2, 1, 3]),
        ]
    nodes += [
        n("MatMul", ["qh", "kh"], ["scores0"]),
        n("Mul", ["scores0", "scale"], ["scores"]),
        n("Softmax", ["scores"], ["attn"], axis=-1),
        n("MatMul", ["attn", "vh"], ["ctx0"]),
        n("Transpose", ["ctx0"], ["ctx1"], perm=[0, 2, 1, 3]),
        n("Reshape", ["ctx1", "merge_shape"], ["ctx"]),
        n("MatMul", ["ctx", weight("wo", (dim, dim))], ["attn_out"]),
        n("Add", ["x", "attn_out"], ["res1"]),
        n("LayerNormalization", ["res1", "ln.scale", "ln.bias"], ["ln2"], axis=-1),
        n("MatMul", ["ln2", weight("w_up", (dim, ffn))], ["up"]),
        n("Mul", ["up", "inv_sqrt2"], ["up_s"]),
        n("Erf", ["up_s"], ["erf"]),
        n("Add", ["erf", "one"], ["erf1"]),
        n("Mul", ["up", "erf1"], ["gelu0"]),
        n("Mul", ["gelu0", "half"], ["gelu"]),
        n("MatMul", ["gelu", weight("w_down", (ffn, dim))], ["down"]),
        n("Add", ["res1", "down"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "transformer_block",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", seq, dim])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", seq, dim])],
        inits,
    )
    return _save(_graph_model(graph), path)
