"""The variant registry names each variant's format, toolchain and runtime; builders live one module per toolchain,
and the converters reach runtimes only through targets' registry."""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from converters import VARIANTS, ConversionError, Variant
from converters.measure import BACKENDS, match_names
from converters.variants import TOOLCHAINS, check_available

BUILDER_MODULES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "onnx2tf": "tflite"}


def test_every_variant_is_a_frozen_record_built_by_its_toolchains_module():
    for variant in VARIANTS.values():
        assert isinstance(variant, Variant)
        with pytest.raises(dataclasses.FrozenInstanceError):
            variant.name = "other"  # type: ignore[misc]
        assert (variant.format, variant.runtime, variant.suffix) == TOOLCHAINS[variant.toolchain]
        assert variant.build.__module__ == f"converters.builders.{BUILDER_MODULES[variant.toolchain]}"
        assert variant.runtime in BACKENDS and variant.summary


def test_unknown_variant_names_the_known_ones():
    with pytest.raises(ConversionError, match="unknown variant 'int3'; known: int8, int8-static"):
        check_available("int3")


def test_missing_packages_are_named():
    variant = dataclasses.replace(VARIANTS["int8"], needs=("no_such_module_here",), packages="no-such-package")
    with pytest.raises(ConversionError, match="int8 needs no-such-package .missing module no_such_module_here"):
        variant.require()


def test_tensor_names_match_across_runtimes():
    assert match_names(["x"], ["serving_default_x:0"], "input") == {"x": "serving_default_x:0"}
    assert match_names(["a.b", "c"], ["c", "serving_default_a_b:0"], "input") == {"a.b": "serving_default_a_b:0",
                                                                                "c": "c"}  # fmt: skip
    with pytest.raises(RuntimeError, match="no output named like 'y'"):
        match_names(["y", "z"], ["Identity", "Identity_1"], "output")


def test_converters_reach_backends_only_through_the_registry():
    for path in (Path(__file__).resolve().parents[3] / "converters").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.startswith("targets.backends") for n in names), path
