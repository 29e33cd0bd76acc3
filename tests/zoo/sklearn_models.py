"""scikit-learn models exported with skl2onnx (ZipMap outputs, string labels, tree ensembles) and a custom-op model."""

from __future__ import annotations

from pathlib import Path

import numpy as np

Built = tuple[Path, dict[str, np.ndarray]]
INPUT = "input"  # every builder's single float input: [N, features]
TARGET_OPSET = {"": 17, "ai.onnx.ml": 3}


def _export(model: object, n_features: int, path: Path, **options: object) -> Path:
    from skl2onnx import convert_sklearn
    from skl2onnx.common.data_types import FloatTensorType

    onx = convert_sklearn(
        model,
        initial_types=[(INPUT, FloatTensorType([None, n_features]))],
        target_opset=TARGET_OPSET,
        options={id(model): options} if options else None,
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(onx.SerializeToString())
    return path


def _split(x: np.ndarray, y: np.ndarray, rows: int, seed: int = 0) -> tuple[np.ndarray, ...]:
    """Train on all but `rows` shuffled rows; those rows (float32) are the realistic inputs."""
    order = np.random.default_rng(seed).permutation(len(x))
    test, train = order[:rows], order[rows:]
    return x[train], y[train], x[test].astype(np.float32)


def random_forest_zipmap(directory: Path) -> Built:
    """RandomForestClassifier on iris with skl2onnx's default outputs: `output_label` int64 [N] and
    `output_probability` seq(map(int64, float)) (ZipMap)."""
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier

    x, y = load_iris(return_X_y=True)
    xt, yt, rows = _split(x, y, 8)
    model = RandomForestClassifier(n_estimators=20, max_depth=6, random_state=0).fit(xt, yt)
    return _export(model, x.shape[1], Path(directory) / "rf_iris_zipmap.onnx"), {INPUT: rows}


def gradient_boosting_binary(directory: Path) -> Built:
    """GradientBoostingClassifier on breast_cancer (binary, 30 features), ZipMap output. (HistGradientBoosting is
    left out: skl2onnx 1.20 cannot convert scikit-learn 1.9's HistGradientBoostingClassifier: bools in an ints
    attribute.)"""
    from sklearn.datasets import load_breast_cancer
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = load_breast_cancer(return_X_y=True)
    xt, yt, rows = _split(x, y, 16)
    model = GradientBoostingClassifier(n_estimators=30, max_depth=3, random_state=0).fit(xt, yt)
    return _export(model, x.shape[1], Path(directory) / "gb_breast_cancer.onnx"), {INPUT: rows}


def gradient_boosting_digits(directory: Path) -> Built:
    """GradientBoostingClassifier on digits (10 classes, 64 pixel features), ZipMap output."""
    from sklearn.datasets import load_digits
    from sklearn.ensemble import GradientBoostingClassifier

    x, y = load_digits(return_X_y=True)
    xt, yt, rows = _split(x, y, 10)
    model = GradientBoostingClassifier(n_estimators=15, max_depth=3, random_state=0).fit(xt, yt)
    return _export(model, x.shape[1], Path(directory) / "gb_digits.onnx"), {INPUT: rows}


def logistic_string_labels(directory: Path) -> Built:
    """LogisticRegression on iris with the species names as labels: `output_label` is a string tensor and the
    ZipMap has string keys ('setosa', 'versicolor', 'virginica')."""
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression

    data = load_iris()
    labels = np.asarray(data.target_names)[data.target]
    xt, yt, rows = _split(data.data, labels, 8)
    model = LogisticRegression(max_iter=500).fit(xt, yt)
    return _export(model, data.data.shape[1], Path(directory) / "logreg_iris_names.onnx"), {INPUT: rows}


def random_forest_regressor(directory: Path) -> Built:
    """RandomForestRegressor on diabetes (10 features): one float output `variable` [N, 1]."""
    from sklearn.datasets import load_diabetes
    from sklearn.ensemble import RandomForestRegressor

    x, y = load_diabetes(return_X_y=True)
    xt, yt, rows = _split(x, y, 12)
    model = RandomForestRegressor(n_estimators=20, max_depth=6, random_state=0).fit(xt, yt)
    return _export(model, x.shape[1], Path(directory) / "rf_diabetes_regressor.onnx"), {INPUT: rows}


BUILDERS = (
    random_forest_zipmap,
    gradient_boosting_binary,
    gradient_boosting_digits,
    logistic_string_labels,
    random_forest_regressor,
)


def build_all(directory: Path) -> list[Built]:
    """Every scikit-learn model above, exported into `directory`: [(path, inputs)]."""
    return [build(Path(directory)) for build in BUILDERS]


CUSTOM_DOMAIN = "com.example.custom"


def custom_op_model(path: Path) -> Built:
    """A valid ONNX model whose only node is `FancyNorm` in the domain 'com.example.custom': no runtime here
    implements it, so loading it must fail with an unsupported-op error (not a crash)."""
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("FancyNorm", ["x"], ["y"], domain=CUSTOM_DOMAIN, epsilon=1e-5, name="fancy_norm")
    graph = helper.make_graph(
        [node],
        "custom_op",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid(CUSTOM_DOMAIN, 1)], ir_version=8
    )
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, path)
    rows = np.random.default_rng(0).normal(size=(4, 8)).astype(np.float32)
    return path, {"x": rows}
