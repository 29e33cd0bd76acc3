"""Deterministic photo-like scenes, rendered text, pages, voiced audio and file bytes: realistic zoo inputs."""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

SAMPLE_RATE = 16_000
LOREM = (
    "Edge devices serve models close to the data.",
    "The agent reports latency, memory and errors.",
    "Invoice 2024-117: 3 items, total 482.50 EUR",
    "Meeting moved to Tuesday 14:30 in room B2.",
    "Shipping address: 12 Harbour Road, Leith",
)


@lru_cache(maxsize=16)
def font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.load_default(size=size)


def _noise(img: Image.Image, seed: int, sigma: float) -> np.ndarray:
    arr = np.asarray(img, dtype=np.float32)
    arr = arr + np.random.default_rng(seed).normal(0.0, sigma, arr.shape)
    return np.clip(arr, 0, 255).astype(np.uint8)


def scene(height: int, width: int, seed: int = 0, face: float = 0.5) -> np.ndarray:
    """An RGB uint8 photo-like scene: sky and ground gradients, a building, a person with a face-like head and
    open hands. `face` is the head's height as a fraction of the image height (0 leaves the person out)."""
    rng = np.random.default_rng(seed)
    h, w = height * 2, width * 2  # drawn at 2x, downsampled: anti-aliased edges
    y = np.linspace(0.0, 1.0, h)[:, None, None]
    sky = (1 - y) * np.array([70, 130, 205]) + y * np.array([200, 220, 240])
    ground = (1 - y) * np.array([95, 120, 60]) + y * np.array([60, 70, 40])
    horizon = int(h * rng.uniform(0.55, 0.65))
    base = np.where(np.arange(h)[:, None, None] < horizon, sky, ground) * np.ones((1, w, 1))
    img = Image.fromarray(base.astype(np.uint8))
    d = ImageDraw.Draw(img)
    d.ellipse([w * 0.78, h * 0.06, w * 0.9, h * 0.06 + w * 0.12], fill=(255, 236, 170))  # sun
    bx = w * rng.uniform(0.02, 0.12)
    d.rectangle([bx, h * 0.25, bx + w * 0.22, horizon], fill=(150, 140, 130))  # building
    for row in range(4):
        for col in range(3):
            x0, y0 = bx + w * (0.02 + 0.07 * col), h * (0.29 + 0.07 * row)
            d.rectangle([x0, y0, x0 + w * 0.04, y0 + h * 0.04], fill=(60, 80, 110))
    if face > 0:
        fh = h * face
        fw, cx, top = fh * 0.75, w * rng.uniform(0.47, 0.53), h * 0.12
        skin, dark = (224, 172, 140), (40, 30, 30)
        d.rectangle([cx - fw * 0.9, top + fh * 1.05, cx + fw * 0.9, h], fill=(40, 70, 150))  # torso
        d.rectangle([cx - fw * 0.18, top + fh * 0.9, cx + fw * 0.18, top + fh * 1.1], fill=skin)  # neck
        d.ellipse([cx - fw / 2 - fw * 0.04, top - fh * 0.06, cx + fw / 2 + fw * 0.04, top + fh * 0.45], fill=dark)
        d.ellipse([cx - fw / 2, top, cx + fw / 2, top + fh], fill=skin)  # head
        for sx in (-1, 1):
            ex, ey = cx + sx * fw * 0.2, top + fh * 0.42
            d.ellipse([ex - fw * 0.1, ey - fh * 0.04, ex + fw * 0.1, ey + fh * 0.04], fill=(250, 250, 250))
            d.ellipse([ex - fw * 0.04, ey - fh * 0.04, ex + fw * 0.04, ey + fh * 0.04], fill=(70, 45, 30))
            d.line([ex - fw * 0.12, ey - fh * 0.1, ex + fw * 0.12, ey - fh * 0.11], fill=dark, width=max(2, h // 150))
            hx, hy = cx + sx * fw * 1.3, top + fh * 1.5  # raised open hand with fingers
            d.ellipse([hx - fw * 0.22, hy - fh * 0.12, hx + fw * 0.22, hy + fh * 0.22], fill=skin)
            for f in range(4):
                fx = hx - fw * 0.18 + f * fw * 0.12
                d.rounded_rectangle([fx, hy - fh * 0.4, fx + fw * 0.08, hy], radius=fw * 0.04, fill=skin)
        d.polygon(
            [(cx, top + fh * 0.45), (cx - fw * 0.07, top + fh * 0.62), (cx + fw * 0.07, top + fh * 0.62)],
            fill=(200, 140, 115),
        )  # nose
        d.chord([cx - fw * 0.2, top + fh * 0.62, cx + fw * 0.2, top + fh * 0.82], 0, 180, fill=(170, 70, 70))
    img = img.filter(ImageFilter.GaussianBlur(1.2)).resize((width, height), Image.Resampling.LANCZOS)
    return _noise(img, seed, 3.0)


def text_image(text: str, height: int = 64, seed: int = 0) -> np.ndarray:
    """One printed line (dark ink on slightly uneven paper), cropped tight with a small margin, RGB uint8."""
    size = int(height * 0.7)
    f = font(size)
    left, top, right, bottom = f.getbbox(text)
    margin = height // 6
    img = Image.new("RGB", (right - left + 2 * margin, height), (238, 236, 228))
    ImageDraw.Draw(img).text((margin - left, (height - (bottom - top)) // 2 - top), text, font=f, fill=(25, 25, 35))
    return _noise(img.filter(ImageFilter.GaussianBlur(0.6)), seed, 4.0)


def page(height: int, width: int, seed: int = 0, lines: Sequence[str] = LOREM) -> np.ndarray:
    """A document page: a title, paragraphs of printed text, a ruled table and a figure box, RGB uint8."""
    rng = np.random.default_rng(seed)
    img = Image.new("RGB", (width, height), (246, 245, 240))
    d = ImageDraw.Draw(img)
    mx, line_h = width // 14, max(12, height // 34)
    d.text((mx, height // 18), "Quarterly Field Report", font=font(int(line_h * 1.6)), fill=(15, 15, 20))
    y = height // 18 + int(line_h * 3)
    for _ in range(2):  # two paragraphs
        for _line in range(5):
            d.text((mx, y), lines[int(rng.integers(len(lines)))], font=font(line_h), fill=(30, 30, 30))
            y += int(line_h * 1.5)
        y += line_h
    tw, th = width - 2 * mx, int(line_h * 1.6)
    for r in range(4):  # a table
        d.line([mx, y + r * th, mx + tw, y + r * th], fill=(60, 60, 60), width=2)
        for c, cell in enumerate(("Device", "Model", "p50 ms")):
            txt = cell if r == 0 else f"{cell[:3].lower()}-{int(rng.integers(10, 99))}"
            d.text((mx + c * tw // 3 + 6, y + r * th + th // 5), txt, font=font(line_h), fill=(30, 30, 30))
    y += 4 * th + line_h
    bottom = min(height - mx, y + height // 5)
    if bottom - y > 2 * line_h:  # a framed figure where the page has room left
        d.rectangle([mx, y, mx + tw // 2, bottom], outline=(40, 40, 40), width=2)
        img.paste(Image.fromarray(scene(bottom - y - 8, tw // 2 - 8, seed, face=0.0)), (mx + 4, y + 4))
    return _noise(img, seed, 2.0)


def voiced(seconds: float = 1.0, seed: int = 0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Speech-like float32 audio in [-1, 1]: a gliding glottal pitch with harmonics under formant-like
    weights, syllable-rate amplitude envelope, breath noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * sr)) / sr
    f0 = 140 + 30 * np.sin(2 * np.pi * 1.3 * t) + 10 * np.sin(2 * np.pi * 5.5 * t)
    phase = 2 * np.pi * np.cumsum(f0) / sr
    formants = (600.0, 1100.0, 2500.0)
    sig = np.zeros_like(t)
    for k in range(1, 30):
        fk = k * 140.0
        weight = sum(np.exp(-(((fk - fm) / 180.0) ** 2)) for fm in formants) + 0.3 / k
        sig += weight * np.sin(k * phase + rng.uniform(0, 2 * np.pi))
    syllables = np.clip(np.sin(2 * np.pi * 4.0 * t + 0.3), 0, None) ** 0.6
    onset = np.clip(t / 0.05, 0, 1) * np.clip((seconds - t) / 0.05, 0, 1)
    sig = sig / np.abs(sig).max() * syllables * onset * 0.6
    sig += rng.normal(0, 0.003, t.shape)
    return sig.astype(np.float32)


def silence(seconds: float = 1.0, seed: int = 0, sr: int = SAMPLE_RATE) -> np.ndarray:
    """Room tone: very quiet noise (a digital zero would be unrealistic)."""
    return np.random.default_rng(seed).normal(0, 1e-4, int(seconds * sr)).astype(np.float32)


def python_source() -> bytes:
    """Real file bytes: this module's own source (a Python file)."""
    return Path(__file__).read_bytes()


def json_document() -> bytes:
    """Real-looking JSON file bytes (a device inventory)."""
    rows = ",\n".join(
        f'    {{"id": "dev-{i:03d}", "arch": "{("x86_64", "aarch64")[i % 2]}", "ram_mb": {512 * (1 + i % 4)}, '
        f'"tags": ["edge", "site-{i % 5}"], "online": {str(i % 3 != 0).lower()}}}'
        for i in range(40)
    )
    return ('{\n  "fleet": "warehouse-north",\n  "devices": [\n' + rows + "\n  ]\n}\n").encode()


def magika_features(data: bytes, beg: int = 1024, end: int = 1024, block: int = 4096, pad: int = 256) -> np.ndarray:
    """magika 1.0's own encoding (Magika._extract_features_from_seekable, standard_v3_3 config): at most `block`
    bytes from each end, whitespace-stripped (lstrip at the start, rstrip at the end), the first `beg` / last `end`
    byte values, padded with token 256; int32 [1, beg + end]."""
    n = min(block, len(data))
    head = list(data[:n].lstrip()[:beg])
    tail = list(data[len(data) - n :].rstrip())[-end:] if end else []
    row = head + [pad] * (beg - len(head)) + [pad] * (end - len(tail)) + tail
    return np.asarray([row], dtype=np.int32)


def to_nchw(img: np.ndarray, mean: Sequence[float], std: Sequence[float], scale: float = 1 / 255) -> np.ndarray:
    """HWC uint8 -> 1xCxHxW float32, (x * scale - mean) / std per channel."""
    x = (img.astype(np.float32) * scale - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return x.transpose(2, 0, 1)[None].astype(np.float32)


def to_nhwc(img: np.ndarray, low: float = 0.0, high: float = 1.0) -> np.ndarray:
    """HWC uint8 -> 1xHxWxC float32 scaled to [low, high] (MediaPipe's input convention)."""
    return (img.astype(np.float32) / 255.0 * (high - low) + low)[None].astype(np.float32)


def resize(img: np.ndarray, height: int, width: int) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize((width, height), Image.Resampling.BILINEAR))


def letterbox(img: np.ndarray, size: int, fill: int = 114) -> np.ndarray:
    """Fit into size x size keeping the aspect ratio, pad the rest (YOLO style, top-left aligned as nudenet does)."""
    h, w = img.shape[:2]
    s = size / max(h, w)
    out = np.full((size, size, 3), fill, np.uint8)
    out[: round(h * s), : round(w * s)] = resize(img, round(h * s), round(w * s))
    return out


def ppocr_line(text: str, width: int, seed: int = 0, rotate180: bool = False) -> np.ndarray:
    """PP-OCR rec/cls input: the line resized to height 48 keeping its aspect ratio (at most `width`),
    (x/255 - 0.5)/0.5, zero-padded on the right to 1x3x48x`width`."""
    img = text_image(text, 64, seed)
    if rotate180:
        img = img[::-1, ::-1]
    w = min(width, int(np.ceil(48 * img.shape[1] / img.shape[0])))
    x = to_nchw(resize(img, 48, w), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    out = np.zeros((1, 3, 48, width), np.float32)
    out[..., :w] = x
    return out
