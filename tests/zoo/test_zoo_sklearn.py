"""The scikit-learn exports run on ONNX Runtime; ZipMap outputs come back as [N, classes] probabilities."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from zoo import native, sklearn_models


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, dict[str, np.ndarray]]]:
    return {p.stem: (p, x) for p, x in sklearn_models.build_all(tmp_path_factory.mktemp("sklearn"))}


def test_every_builder_exports_a_model(built: dict) -> None:
    assert set(built) == {"rf_iris_zipmap", "gb_breast_cancer", "gb_digits", "logreg_iris_names",
                          "rf_diabetes_regressor"}  # fmt: skip
    for path, inputs in built.values():
        assert path.stat().st_size > 500 and list(inputs) == [sklearn_models.INPUT]


@pytest.mark.parametrize("stem,classes", [("rf_iris_zipmap", 3), ("gb_breast_cancer", 2), ("gb_digits", 10)])
def test_zipmap_becomes_a_probability_matrix(built: dict, stem: str, classes: int) -> None:
    path, inputs = built[stem]
    out = native.native_outputs(path, "onnx", inputs)
    rows = len(inputs[sklearn_models.INPUT])
    probs, labels = out["output_probability"], out["output_label"]
    assert probs.shape == (rows, classes) and probs.dtype == np.float32
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, atol=1e-4)
    assert labels.dtype == np.int64 and (labels == probs.argmax(axis=1)).all()  # classes 0..k-1: key = column


def test_string_labels_and_string_keyed_zipmap(built: dict) -> None:
    path, inputs = built["logreg_iris_names"]
    out = native.native_outputs(path, inputs=inputs)
    names = np.array(["setosa", "versicolor", "virginica"])  # ZipMap keys, in the model's classes_ order
    assert out["output_label"].dtype == object and set(out["output_label"]) <= set(names)
    assert (names[out["output_probability"].argmax(axis=1)] == out["output_label"]).all()


def test_regressor_predicts_in_the_target_range(built: dict) -> None:
    path, inputs = built["rf_diabetes_regressor"]
    pred = native.native_outputs(path, inputs=inputs)["variable"]
    assert pred.shape == (len(inputs[sklearn_models.INPUT]), 1)
    assert np.isfinite(pred).all() and pred.min() >= 25 and pred.max() <= 346  # load_diabetes target range


def test_custom_op_model_is_refused_by_onnxruntime(tmp_path: Path) -> None:
    path, inputs = sklearn_models.custom_op_model(tmp_path / "custom.onnx")
    import onnx

    onnx.checker.check_model(onnx.load(path))  # valid ONNX: only the op is unknown
    with pytest.raises(Exception, match="FancyNorm"):
        native.native_outputs(path, inputs=inputs)
