"""One builder module per toolchain: ONNX Runtime (quantization, fp16, int4, pruning), OpenVINO/NNCF, onnx2tf."""
