"""The embedded world: a procedural image–caption dataset that needs no download.

Every image shows ONE object on a textured background, described by five attributes:

* shape (the class, 10 classes): circle, square, triangle, star, cross, heart, arrow,
  diamond, ring, crescent — shapes are drawn with at most ±15° rotation so that a square
  never looks like a diamond (the diamond is also elongated);
* colour (8): red, orange, yellow, green, blue, purple, pink, white (with a small jitter);
* size (3): small, medium, large;
* position (9): a 3×3 grid (top/middle/bottom × left/center/right) with jitter;
* background (7): black, gray, striped, checkered, dotted, noisy, gradient (achromatic, so the
  object's colour is never ambiguous).

Each image has 3–5 reference captions drawn from different templates with synonyms
(``captions_of(i)``); item ``i`` returns the first one. Everything about item ``i`` of a split
is a pure function of ``(seed, split, i)``: the splits use disjoint random streams, a prefix of a
larger world equals a smaller world, and an image can be rendered on its own. Labels are
balanced (``label = i % 10``).
"""

from __future__ import annotations

import functools
import math
import random
import re
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from PIL import Image, ImageDraw
from torch.utils.data import Dataset

__all__ = [
    "BACKGROUNDS",
    "COLORS",
    "SHAPES",
    "SIZES",
    "WORLD_VERSION",
    "ZEROSHOT_TEMPLATES",
    "EmbeddedWorld",
]

#: Bumped whenever rendering or captions change; part of every cache key built on the world.
WORLD_VERSION = 6

SPLITS = {"train": 0, "val": 1, "test": 2}
DEFAULT_SIZES = {"train": 20000, "val": 1000, "test": 1000}

SHAPES = [
    "circle",
    "square",
    "triangle",
    "star",
    "cross",
    "heart",
    "arrow",
    "diamond",
    "ring",
    "crescent",
]
SHAPE_SYNONYMS = {
    "circle": ["disc", "round disk"],
    "square": ["box shape"],
    "triangle": ["three-sided shape"],
    "star": ["five-pointed star"],
    "cross": ["plus sign"],
    "heart": ["heart shape"],
    "arrow": ["arrow shape", "upward arrow"],
    "diamond": ["rhombus"],
    "ring": ["donut", "hoop"],
    "crescent": ["crescent moon"],
}
COLORS = {
    "red": (220, 40, 40),
    "orange": (245, 140, 20),
    "yellow": (240, 220, 40),
    "green": (40, 185, 60),
    "blue": (40, 90, 235),
    "purple": (150, 60, 205),
    "pink": (250, 125, 195),
    "white": (245, 245, 245),
}
COLOR_SYNONYMS = {
    "red": ["scarlet", "crimson"],
    "orange": ["tangerine"],
    "yellow": ["golden"],
    "green": ["emerald"],
    "blue": ["azure"],
    "purple": ["violet"],
    "pink": ["rose"],
    "white": ["snow-white"],
}
SIZES = ["small", "medium", "large"]
SIZE_SYNONYMS = {
    "small": ["small", "little", "tiny"],
    "medium": ["medium", "medium-sized", "mid-sized"],
    "large": ["large", "big", "huge"],
}
SIZE_RADIUS = {"small": (9.0, 11.0), "medium": (12.5, 15.0), "large": (16.5, 20.0)}
BACKGROUNDS = ["black", "gray", "striped", "checkered", "dotted", "noisy", "gradient"]
BACKGROUND_SYNONYMS = {
    "black": ["black", "dark", "pitch-black"],
    "gray": ["gray", "grey", "plain gray"],
    "striped": ["striped", "stripy", "lined"],
    "checkered": ["checkered", "checkerboard", "chequered"],
    "dotted": ["dotted", "polka-dot", "spotted"],
    "noisy": ["noisy", "grainy", "speckled"],
    "gradient": ["gradient", "shaded", "fading"],
}
VERTICAL = ["top", "middle", "bottom"]
HORIZONTAL = ["left", "center", "right"]

TEMPLATES = [
    "a {size} {color} {shape} {pos} on a {bg} background.",
    "a {color} {shape} {pos}.",
    "there is a {size} {color} {shape} {pos}.",
    "an image of a {color} {shape} on a {bg} background.",
    "a {shape} in {color}, {size}, {pos}.",
    "{pos}, a {size} {color} {shape} against a {bg} backdrop.",
    "a picture of a {size} {shape}.",
    "a {bg} background with a {color} {shape} {pos}.",
    "the {shape} is {size} and {color}.",
    "a photo of a {color} {shape}.",
    "a {size} {shape} drawn in {color} {pos}.",
    "a {shape} {pos} of the image.",
    "a {color} {shape}.",
    "a {size} {shape}.",
    "a {shape} on a {bg} background.",
    "a {shape} {pos}.",
]

#: Zero-shot prompt templates suited to the world's captions.
ZEROSHOT_TEMPLATES = [
    "a photo of a {}.",
    "a picture of a {}.",
    "an image of a {}.",
    "a drawing of a {}.",
    "there is a {}.",
    "a {} on a background.",
]

_ARTICLE = re.compile(r"\b([Aa]) (?=[aeiouAEIOU])")
_CANVAS = 64  # world coordinates; images are rendered at ``image_size``
_SUPERSAMPLE = 2


def _position_phrases(v: str, h: str) -> list[str]:
    """Synonymous phrases for a cell of the 3×3 grid."""
    upper = {"top": "upper", "bottom": "lower"}
    if v == "middle" and h == "center":
        return ["in the center", "in the middle", "at the centre"]
    if v == "middle":
        return [f"on the {h}", f"on the {h} side", f"near the {h} edge"]
    if h == "center":
        return [f"at the {v}", f"near the {v} edge", f"at the {v} center"]
    return [f"in the {v} {h} corner", f"at the {upper[v]} {h}", f"in the {v}-{h} area"]


def _pick(rng: random.Random, canonical: str, synonyms: list[str], p: float) -> str:
    """The canonical word with probability ``p``, else one of its synonyms."""
    return canonical if rng.random() < p else rng.choice(synonyms)


def _polygon(shape: str) -> np.ndarray:
    """Unit-radius outline of a polygonal shape, shape (V, 2), y pointing down."""

    def ngon(n: int, r: float = 1.0, start: float = -np.pi / 2) -> np.ndarray:
        a = start + 2 * np.pi * np.arange(n) / n
        return np.stack([r * np.cos(a), r * np.sin(a)], 1)

    if shape == "square":
        return np.array([[-1, -1], [1, -1], [1, 1], [-1, 1]], float) * 0.82
    if shape == "triangle":
        return ngon(3) * np.array([1.05, 1.0]) + np.array([0.0, 0.2])
    if shape == "arrow":
        return np.array(
            [
                [0, -1],
                [0.95, -0.05],
                [0.36, -0.05],
                [0.36, 1],
                [-0.36, 1],
                [-0.36, -0.05],
                [-0.95, -0.05],
            ],
            float,
        )
    if shape == "diamond":
        return np.array([[0, -1], [0.58, 0], [0, 1], [-0.58, 0]], float)
    if shape == "star":
        outer, inner = ngon(5), ngon(5, 0.42, -np.pi / 2 + np.pi / 5)
        return np.stack([outer, inner], 1).reshape(-1, 2)
    if shape == "cross":
        a, b = 0.32, 1.0
        return np.array(
            [
                [-a, -b],
                [a, -b],
                [a, -a],
                [b, -a],
                [b, a],
                [a, a],
                [a, b],
                [-a, b],
                [-a, a],
                [-b, a],
                [-b, -a],
                [-a, -a],
            ],
            float,
        )
    if shape == "heart":
        t = np.linspace(0, 2 * np.pi, 48, endpoint=False)
        x = 16 * np.sin(t) ** 3
        y = 13 * np.cos(t) - 5 * np.cos(2 * t) - 2 * np.cos(3 * t) - np.cos(4 * t)
        return np.stack([x, -y - 2.5], 1) / 16.5
    raise ValueError(f"no polygon for shape {shape!r}")


_POLYGONS = {s: _polygon(s) for s in SHAPES if s not in ("circle", "ring", "crescent")}


@dataclass(frozen=True)
class _Item:
    """Everything that defines one image (rendering parameters + attribute words)."""

    label: int
    color: str
    rgb: tuple[int, int, int]
    size: str
    radius: float
    v: str
    h: str
    cx: float
    cy: float
    angle: float
    background: str
    bg_params: tuple[float, ...]
    noise_seed: int


def _sample_item(rng: random.Random, label: int) -> _Item:
    """Draw the attributes of one image."""
    color = rng.choice(list(COLORS))
    rgb = tuple(min(255, max(0, c + rng.randint(-15, 15))) for c in COLORS[color])
    size = rng.choice(SIZES)
    radius = rng.uniform(*SIZE_RADIUS[size])
    vi, hi = rng.randrange(3), rng.randrange(3)
    margin = radius + 1.5

    def coord(cell: int) -> float:
        centre = _CANVAS * (0.22, 0.5, 0.78)[cell] + rng.uniform(-3, 3)
        return min(_CANVAS - margin, max(margin, centre))

    cx, cy = coord(hi), coord(vi)
    return _Item(
        label=label,
        color=color,
        rgb=rgb,
        size=size,
        radius=radius,
        v=VERTICAL[vi],
        h=HORIZONTAL[hi],
        cx=cx,
        cy=cy,
        angle=rng.uniform(-15, 15),
        background=rng.choice(BACKGROUNDS),
        bg_params=tuple(rng.random() for _ in range(5)),
        noise_seed=rng.getrandbits(31),
    )


def _captions(rng: random.Random, item: _Item) -> list[str]:
    """3–5 captions of one image, each from a different template."""
    shape = SHAPES[item.label]
    out = []
    for template in rng.sample(TEMPLATES, rng.randint(3, 5)):
        words = {
            "shape": _pick(rng, shape, SHAPE_SYNONYMS[shape], 0.9),
            "color": _pick(rng, item.color, COLOR_SYNONYMS[item.color], 0.7),
            "size": rng.choice(SIZE_SYNONYMS[item.size]),
            "pos": rng.choice(_position_phrases(item.v, item.h)),
            "bg": rng.choice(BACKGROUND_SYNONYMS[item.background]),
        }
        text = _ARTICLE.sub(r"\1n ", template.format(**words))
        out.append(text[0].upper() + text[1:])
    return out


@functools.lru_cache(maxsize=8)
def _grid(n: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (y, x) of an n×n image, in world units."""
    yy, xx = np.mgrid[0:n, 0:n].astype(np.float32) * (_CANVAS / n)
    return yy, xx


def _background(item: _Item, n: int) -> Image.Image:
    """Achromatic background texture, an n×n "L" image."""
    p = item.bg_params
    lo = round(25 + 30 * p[0])
    hi = lo + round(30 + 20 * p[1])
    kind = item.background
    if kind == "black":
        return Image.new("L", (n, n), round(5 + 30 * p[0]))
    if kind == "gray":
        return Image.new("L", (n, n), round(100 + 40 * p[1]))
    yy, xx = _grid(n)
    if kind == "striped":
        period = 6 + 5 * p[2]
        coord = [xx, yy, xx + yy][int(p[3] * 3)]
        pix = np.where(((coord + p[4] * period) // (period / 2)) % 2 == 0, lo, hi)
    elif kind == "checkered":
        s = 5 + 4 * p[2]
        pix = np.where(((xx + p[3] * s) // s + (yy + p[4] * s) // s) % 2 == 0, lo, hi)
    elif kind == "dotted":
        s = 7 + 3 * p[2]
        dx, dy = (xx + p[3] * s) % s - s / 2, (yy + p[4] * s) % s - s / 2
        pix = np.where(dx * dx + dy * dy < 2.5, hi + 30, lo)
    elif kind == "noisy":
        pix = np.clip(np.random.default_rng(item.noise_seed).normal(60, 18, (n, n)), 0, 255)
    elif kind == "gradient":
        a = 2 * np.pi * p[2]
        t = ((xx - _CANVAS / 2) * np.cos(a) + (yy - _CANVAS / 2) * np.sin(a)) / _CANVAS + 0.5
        pix = lo + (hi + 20 - lo) * np.clip(t, 0, 1)
    else:
        raise ValueError(f"unknown background {kind!r}")
    return Image.fromarray(pix.astype(np.uint8), "L")


def _mask(item: _Item, n: int) -> Image.Image:
    """Anti-aliased object mask, an n×n "L" image (255 inside the object)."""
    m = n * _SUPERSAMPLE
    scale = m / _CANVAS
    canvas = Image.new("L", (m, m), 0)
    draw = ImageDraw.Draw(canvas)
    cx, cy, r = item.cx * scale, item.cy * scale, item.radius * scale
    shape = SHAPES[item.label]

    def disc(x: float, y: float, rad: float, fill: int) -> None:
        draw.ellipse([x - rad, y - rad, x + rad, y + rad], fill=fill)

    if shape in ("circle", "ring", "crescent"):
        disc(cx, cy, r, 255)
        if shape == "ring":
            disc(cx, cy, 0.55 * r, 0)
        elif shape == "crescent":
            a = math.radians(item.angle) - math.pi / 4
            disc(cx + 0.45 * r * math.cos(a), cy + 0.45 * r * math.sin(a), 0.85 * r, 0)
    else:
        a = math.radians(item.angle)
        rot = np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
        pts = _POLYGONS[shape] @ rot.T * r + np.array([cx, cy])
        draw.polygon([tuple(p) for p in pts.tolist()], fill=255)
    return canvas.reduce(_SUPERSAMPLE)


def render(item: _Item, image_size: int = 64) -> np.ndarray:
    """Render one item as a uint8 array (image_size, image_size, 3)."""
    bg = _background(item, image_size).convert("RGB")
    fg = Image.new("RGB", (image_size, image_size), item.rgb)
    return np.asarray(Image.composite(fg, bg, _mask(item, image_size)))


class EmbeddedWorld(Dataset):
    """Procedural image–caption world; items are ``(PIL.Image RGB, caption, label)``.

    Args:
        split: "train", "val" or "test" (disjoint random streams).
        size: number of images (default 20000 / 1000 / 1000).
        seed: world seed; the same (seed, split, size, image_size) gives the same data.
        image_size: side of the rendered square images in pixels.
    """

    templates: ClassVar[list[str]] = ZEROSHOT_TEMPLATES

    def __init__(
        self, split: str = "train", size: int | None = None, seed: int = 0, image_size: int = 64
    ) -> None:
        if split not in SPLITS:
            raise ValueError(f"split must be one of {sorted(SPLITS)}, got {split!r}")
        size = DEFAULT_SIZES[split] if size is None else size
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        if image_size < 16:
            raise ValueError(f"image_size must be >= 16, got {image_size}")
        self.split, self.size, self.seed, self.image_size = split, size, seed, image_size
        self.classnames = list(SHAPES)
        self._items: list[_Item] = []
        self._captions: list[list[str]] = []
        for i in range(size):
            rng = random.Random(f"cma-world-{WORLD_VERSION}-{seed}-{split}-{i}")
            item = _sample_item(rng, i % len(SHAPES))
            self._items.append(item)
            self._captions.append(_captions(rng, item))
        self.labels = np.array([it.label for it in self._items], dtype=np.int64)
        self._images: np.ndarray | None = None

    @property
    def config(self) -> dict:
        """JSON-able description of this data (for cache keys)."""
        return {
            "kind": "embedded",
            "version": WORLD_VERSION,
            "split": self.split,
            "size": self.size,
            "seed": self.seed,
            "image_size": self.image_size,
        }

    def __len__(self) -> int:
        return self.size

    def _check_index(self, i: int) -> int:
        if not -self.size <= i < self.size:
            raise IndexError(f"index {i} out of range for EmbeddedWorld of size {self.size}")
        return i % self.size

    def image_array(self, i: int) -> np.ndarray:
        """Image ``i`` as uint8 (H, W, 3), from the rendered cache when present."""
        i = self._check_index(i)
        if self._images is not None:
            return self._images[i]
        return render(self._items[i], self.image_size)

    @property
    def images(self) -> np.ndarray:
        """All images as one uint8 array (N, H, W, 3), rendered once and kept in memory."""
        if self._images is None:
            out = np.empty((self.size, self.image_size, self.image_size, 3), np.uint8)
            for i, item in enumerate(self._items):
                out[i] = render(item, self.image_size)
            self._images = out
        return self._images

    def __getitem__(self, i: int) -> tuple[Image.Image, str, int]:
        i = self._check_index(i)
        return Image.fromarray(self.image_array(i)), self._captions[i][0], int(self.labels[i])

    def captions_of(self, i: int) -> list[str]:
        """All reference captions of image ``i`` (3–5, the first is the item's caption)."""
        return list(self._captions[self._check_index(i)])

    def attributes_of(self, i: int) -> dict[str, str]:
        """The five attributes of image ``i`` (canonical words)."""
        it = self._items[self._check_index(i)]
        return {
            "shape": SHAPES[it.label],
            "color": it.color,
            "size": it.size,
            "position": f"{it.v} {it.h}",
            "background": it.background,
        }
