"""Rendered text lines as a text-orientation classifier sees them in the wild: several fonts and sizes, uneven paper,
ink contrast, blur, noise, slight skew, loose or tight crops, upright or upside down in equal numbers."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter, ImageFont

from .signals import resize, to_nchw

FONT_DIRS = ("/usr/share/fonts", "/usr/local/share/fonts", str(Path.home() / ".fonts"))
WORDS = (
    "invoice", "total", "amount", "due", "date", "paid", "order", "number", "customer", "account", "balance",
    "shipping", "address", "street", "road", "meeting", "moved", "to", "tuesday", "room", "report", "quarterly",
    "field", "device", "model", "latency", "memory", "errors", "agent", "serves", "data", "edge", "close", "the",
    "and", "of", "for", "with", "from", "by", "page", "section", "table", "figure", "note", "see", "above", "below",
    "contact", "phone", "email", "Berlin", "Leith", "Harbour", "Station", "North", "Warehouse", "Delivery",
    "Receipt", "Payment", "Tax", "VAT", "Qty", "Unit", "Price", "Subtotal", "Item", "ID", "REF", "No.", "Tel.",
    "Fax", "www.example.com", "info@example.org",
)  # fmt: skip
PUNCT = (",", ".", ":", ";", "-", "/", "(", ")", "#", "%", "&")


@lru_cache(maxsize=1)
def font_files() -> tuple[str, ...]:
    """TrueType/OpenType fonts installed on this machine (fc-list's directories); empty: PIL's own default font."""
    found: list[str] = []
    for root in FONT_DIRS:
        if Path(root).is_dir():
            found += sorted(str(p) for p in Path(root).rglob("*") if p.suffix.lower() in (".ttf", ".otf"))
    return tuple(f for f in found if "Math" not in f)  # symbol fonts draw no Latin text


@lru_cache(maxsize=256)
def _font(path: str, size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    return ImageFont.truetype(path, size) if path else ImageFont.load_default(size=size)


def _text(rng: np.random.Generator) -> str:
    """A line of words, numbers and punctuation, of 1 to 7 tokens, in mixed case."""
    parts = []
    for _ in range(int(rng.integers(1, 8))):
        kind = rng.random()
        if kind < 0.65:
            word = str(rng.choice(WORDS))
            word = word.upper() if rng.random() < 0.15 else word.capitalize() if rng.random() < 0.3 else word
        elif kind < 0.9:
            word = str(int(rng.integers(0, 10 ** int(rng.integers(1, 6)))))
            if rng.random() < 0.3:
                word += f".{int(rng.integers(0, 100)):02d}"
        else:
            word = str(rng.choice(PUNCT))
        parts.append(word)
    return " ".join(parts)


def _paper(rng: np.random.Generator, height: int, width: int, tone: float) -> Image.Image:
    """Uneven paper (or a dark panel): a tone with a gradient, faint rules and grain."""
    y = np.linspace(0, 1, height)[:, None]
    x = np.linspace(0, 1, width)[None, :]
    shade = tone + rng.uniform(-25, 25) * x + rng.uniform(-20, 20) * y
    tint = rng.uniform(-10, 10, 3)
    base = shade[..., None] + tint[None, None, :] + rng.normal(0, rng.uniform(1, 6), (height, width, 1))
    img = Image.fromarray(np.clip(base, 0, 255).astype(np.uint8))
    if rng.random() < 0.25:  # a form's ruled line under or over the text
        d = ImageDraw.Draw(img)
        ry = int(rng.choice([rng.integers(1, 4), height - int(rng.integers(2, 5))]))
        d.line([0, ry, width, ry], fill=tuple(int(v) for v in np.clip(tone - 90 + tint, 0, 255)), width=1)
    return img


def text_line(rng: np.random.Generator, text: str | None = None) -> np.ndarray:
    """One rendered line, upright, RGB uint8: random font, size, contrast, skew, blur, noise and crop."""
    fonts = font_files() or ("",)
    f = _font(str(rng.choice(fonts)), int(rng.integers(18, 64)))
    text = text or _text(rng)
    left, top, right, bottom = f.getbbox(text)
    w, h = max(1, right - left), max(1, bottom - top)
    pad_x, pad_y = int(rng.integers(2, 30)), int(rng.integers(1, max(2, h // 2)))
    dark_panel = rng.random() < 0.12
    tone = rng.uniform(40, 90) if dark_panel else rng.uniform(170, 250)
    contrast = rng.uniform(50, 200)
    ink = tone + contrast if dark_panel else tone - contrast
    ink_rgb = tuple(int(np.clip(ink + rng.uniform(-15, 15), 0, 255)) for _ in range(3))
    img = _paper(rng, h + 2 * pad_y, w + 2 * pad_x, tone)
    ImageDraw.Draw(img).text((pad_x - left, pad_y - top), text, font=f, fill=ink_rgb)
    angle = rng.normal(0, 1.5)
    if abs(angle) > 0.3:
        img = img.rotate(angle, Image.Resampling.BILINEAR, expand=False, fillcolor=tuple(int(tone) for _ in range(3)))
    arr = np.asarray(img)
    if rng.random() < 0.5:  # a detector's imperfect box: cut into the ascenders / descenders or the line ends
        hh, ww = arr.shape[:2]
        t, b = int(rng.integers(0, max(1, hh // 6))), int(rng.integers(0, max(1, hh // 6)))
        lc, rc = int(rng.integers(0, max(1, ww // 10))), int(rng.integers(0, max(1, ww // 10)))
        arr = arr[t : hh - b, lc : ww - rc]
    img = Image.fromarray(np.ascontiguousarray(arr))
    if rng.random() < 0.7:
        img = img.filter(ImageFilter.GaussianBlur(float(rng.uniform(0.2, 1.6))))
    noisy = np.asarray(img, np.float32) + rng.normal(0, rng.uniform(0, 14), np.asarray(img).shape)
    return np.clip(noisy, 0, 255).astype(np.uint8)


def ppocr_input(img: np.ndarray, width: int = 192) -> np.ndarray:
    """PaddleOCR's cls preprocessing: height 48 keeping the aspect ratio (at most `width`), (x/255-0.5)/0.5, zero
    padding on the right: 1x3x48x`width` float32."""
    w = min(width, int(np.ceil(48 * img.shape[1] / img.shape[0])))
    x = to_nchw(resize(img, 48, max(1, w)), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    out = np.zeros((1, 3, 48, width), np.float32)
    out[..., : x.shape[-1]] = x
    return out


def orientation_set(count: int, seed: int, width: int = 192) -> tuple[np.ndarray, np.ndarray]:
    """`count` lines as [count, 3, 48, width] inputs and their true labels (0 upright, 1 upside down, balanced)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(count) % 2
    rng.shuffle(labels)
    xs = []
    for label in labels:
        img = text_line(rng)
        xs.append(ppocr_input(img[::-1, ::-1] if label else img, width))
    return np.concatenate(xs), labels.astype(np.int64)
