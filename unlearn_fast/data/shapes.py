"""Procedurally generated RGB images of objects drawn in styles, with their prompts (the shapes benchmark's data).

No files: every image is drawn from a seed with numpy (box-filtered down with torch).
An image shows one of the 8 ``OBJECTS`` in one of the 6 ``STYLES`` on a plain background:

* drawn at ``SUPERSAMPLE`` (4) times the final resolution and box-filtered down to
  ``SHAPES_IMAGE_SIZE`` (32) x 32, so edges and patterns are antialiased;
* size: the object's bounding circle spans ``SIZE_RANGE`` (60-85%) of the image width; position:
  uniform such that it stays inside the image (2% margin); rotation: uniform in
  +-``MAX_ROTATION_DEG`` (30) degrees (the pattern of the style turns with the object; the
  diamond is a tall rhombus so that it is never a turned square);
* background: plain grey, dark (level 0.00-0.20) or light (0.80-1.00) with probability 1/2; the
  object's colour is a random saturated hue whose brightness contrasts with it (luminance
  difference >= 0.35);
* styles: ``solid`` (filled), ``hollow`` (an outline 1.75 px wide, background inside),
  ``striped`` (parallel bands, period 5-6 px, random angle), ``dotted`` (a grid of dots of
  diameter ~3.2 px, period 6 px), ``checkered`` (squares of 3 px, period 6 px), ``gradient``
  (linear blend across the object, random direction, between the colour and a second,
  near-complementary one: the first of up to 20 draws 0.6 or more away from it in RGB); the
  patterned styles (striped, dotted, checkered) also get a 1 px outline in the colour so that
  the object's silhouette stays visible.

Images are float32 ``(3, 32, 32)`` in [-1, 1]. Image ``i`` of ``generate(n, seed)`` uses
``numpy.random.default_rng([seed, i])`` and the combination ``i % 48`` (object-major: object
``(i % 48) // 6``, style ``i % 6``), so a seed gives the same images on every machine and a
longer run extends a shorter one. Fixed splits (``load_split``): ``"train"`` = seed
``SPLIT_SEEDS["train"]`` (0), ``TRAIN_PER_COMBO`` (200) images per object-style combination
(9,600); ``"heldout"`` = seed 1, ``HELDOUT_PER_COMBO`` (25) per combination (1,200).

Prompts (:func:`prompt`, :func:`heldout_prompt`, :func:`prompt_table`): a prompt names an
object and a style (``"a striped star"``), an object alone (``"a star"``: any style) or a style
alone (``"something striped"``: any object). The ``TRAIN_*_TEMPLATES`` are used in training; the
``HELDOUT_*_TEMPLATES`` (``"star, striped"``, ``"a star with stripes"``, ``"a picture of a
star"``, ...) never are, for the generalisation check. ``SHAPES_WORDS`` lists every word of
every prompt (the vocabulary of the tiny CLIP tokenizer, see ``unlearn_fast.shapes_zoo``).
"""

from __future__ import annotations

import re
from functools import lru_cache
from typing import NamedTuple, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F

#: side of the square RGB images of the shapes benchmark
SHAPES_IMAGE_SIZE = 32
#: images are drawn at this many times the final resolution, then box-filtered down
SUPERSAMPLE = 4
OBJECTS = ("circle", "square", "triangle", "star", "cross", "heart", "diamond", "arrow")
STYLES = ("solid", "hollow", "striped", "dotted", "checkered", "gradient")
NUM_OBJECTS = len(OBJECTS)
NUM_STYLES = len(STYLES)
NUM_COMBOS = NUM_OBJECTS * NUM_STYLES
#: the object's bounding circle spans this fraction of the image width (diameter)
SIZE_RANGE = (0.60, 0.85)
MAX_ROTATION_DEG = 30.0
#: seeds and sizes of the fixed splits
SPLIT_SEEDS = {"train": 0, "heldout": 1}
TRAIN_PER_COMBO = 200
HELDOUT_PER_COMBO = 25

# style geometry, in pixels of the final 32x32 image
_HOLLOW_WIDTH = 1.75
_OUTLINE_WIDTH = 1.0
_STRIPE_PERIOD = (5.0, 6.0)
_GRID_PERIOD = 6.0
_DOT_RADIUS = 1.6


# --- prompts ----------------------------------------------------------------------------------------

#: training prompts naming an object and a style; index 0 is the canonical prompt
TRAIN_COMBO_TEMPLATES = ("a {style} {object}", "{style} {object}", "an image of a {style} {object}",
                         "a {style} {object} shape")
#: training prompts naming an object only (the image has a random style)
TRAIN_OBJECT_TEMPLATES = ("a {object}", "{object}", "a {object} shape")
#: training prompts naming a style only (the image shows a random object)
TRAIN_STYLE_TEMPLATES = ("something {style}", "a {style} shape", "{style}")

#: per style, a phrase for ``{styled}`` in the held-out templates ("a star with stripes")
HELDOUT_STYLE_PHRASES = {
    "solid": "a filled {object}",
    "hollow": "an outlined {object}",
    "striped": "a {object} with stripes",
    "dotted": "a {object} with dots",
    "checkered": "a {object} with checks",
    "gradient": "a {object} with a gradient",
}
#: held-out paraphrases, never used in training (``{styled}``: the style's phrase above)
HELDOUT_COMBO_TEMPLATES = ("{object}, {style}", "{styled}", "a picture of a {style} {object}")
HELDOUT_OBJECT_TEMPLATES = ("a picture of a {object}", "the {object}")
HELDOUT_STYLE_TEMPLATES = ("a {style} thing", "anything {style}")

#: every word of every prompt above (plus a few spare words for later prompts)
SHAPES_WORDS = OBJECTS + STYLES + (
    "a", "an", "the", "of", "image", "picture", "shape", "something", "anything", "thing", "with",
    "stripes", "dots", "checks", "gradient", "filled", "outlined", "outline", "pattern", "style", "and", "in",
    "drawing", "colour", "color", "plain", "empty",
)


class ShapePrompt(NamedTuple):
    """A prompt and what it names: ``object`` / ``style`` are names, ``None`` when not named."""

    text: str
    object: Optional[str]
    style: Optional[str]


def _article(text: str) -> str:
    return re.sub(r"\ba (?=[aeiou])", "an ", text)


def _name(value: Union[str, int, None], names: Sequence[str], what: str) -> Optional[str]:
    if value is None:
        return None
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        if 0 <= int(value) < len(names):
            return names[int(value)]
        raise ValueError(f"{what}: expected an id in [0, {len(names)}), got {value}")
    if value in names:
        return str(value)
    raise ValueError(f"{what}: expected one of {names} or its id, got {value!r}")


def object_id(obj: Union[str, int]) -> int:
    """Index of an object given by name or id."""
    return OBJECTS.index(_name(obj, OBJECTS, "object"))


def style_id(style: Union[str, int]) -> int:
    """Index of a style given by name or id."""
    return STYLES.index(_name(style, STYLES, "style"))


def _templates(obj, style, heldout):
    if obj is not None and style is not None:
        return HELDOUT_COMBO_TEMPLATES if heldout else TRAIN_COMBO_TEMPLATES
    if obj is not None:
        return HELDOUT_OBJECT_TEMPLATES if heldout else TRAIN_OBJECT_TEMPLATES
    if style is not None:
        return HELDOUT_STYLE_TEMPLATES if heldout else TRAIN_STYLE_TEMPLATES
    raise ValueError("object, style: name at least one of them (the null prompt is \"\")")


def _format(template, obj, style):
    styled = HELDOUT_STYLE_PHRASES[style].format(object=obj) if style is not None else None
    return _article(template.format(object=obj, style=style, styled=styled))


def prompt(object: Union[str, int, None] = None, style: Union[str, int, None] = None, template: int = 0) -> str:
    """A training prompt: object and style (``"a striped star"``), object only (``"a star"``) or
    style only (``"something striped"``), from the matching ``TRAIN_*_TEMPLATES[template]``."""
    obj, sty = _name(object, OBJECTS, "object"), _name(style, STYLES, "style")
    templates = _templates(obj, sty, heldout=False)
    if not 0 <= template < len(templates):
        raise ValueError(f"template: expected 0..{len(templates) - 1}, got {template}")
    return _format(templates[template], obj, sty)


def heldout_prompt(object: Union[str, int, None] = None, style: Union[str, int, None] = None,
                   template: int = 0) -> str:
    """A held-out paraphrase (never trained on), from the matching ``HELDOUT_*_TEMPLATES``."""
    obj, sty = _name(object, OBJECTS, "object"), _name(style, STYLES, "style")
    templates = _templates(obj, sty, heldout=True)
    if not 0 <= template < len(templates):
        raise ValueError(f"template: expected 0..{len(templates) - 1}, got {template}")
    return _format(templates[template], obj, sty)


def prompt_table(which: str = "train") -> list:
    """Every prompt of ``which`` (``"train"`` or ``"heldout"``) as :class:`ShapePrompt`, in this
    order: object-style combinations (object-major, then style, then template), objects
    alone, styles alone. The null prompt ``""`` is not included."""
    if which not in ("train", "heldout"):
        raise ValueError(f"which: expected 'train' or 'heldout', got {which!r}")
    fmt = heldout_prompt if which == "heldout" else prompt
    out = []
    for kind in ("combo", "object", "style"):
        for o in (OBJECTS if kind != "style" else (None,)):
            for s in (STYLES if kind != "object" else (None,)):
                for k in range(len(_templates(o, s, which == "heldout"))):
                    out.append(ShapePrompt(fmt(o, s, k), o, s))
    return out


def training_prompts() -> list:
    """The text of every training prompt (``prompt_table("train")``)."""
    return [p.text for p in prompt_table("train")]


def heldout_prompts() -> list:
    """The text of every held-out paraphrase (``prompt_table("heldout")``)."""
    return [p.text for p in prompt_table("heldout")]


# --- drawing ------------------------------------------------------------------------------------------


def _in_polygon(x, y, verts):
    """Even-odd rule: which points (x, y) lie inside the polygon ``verts`` [(x, y), ...]."""
    inside = np.zeros(x.shape, dtype=bool)
    n = len(verts)
    for i in range(n):
        x1, y1 = verts[i]
        x2, y2 = verts[(i + 1) % n]
        cond = (y1 > y) != (y2 > y)
        xc = x1 + (y - y1) * (x2 - x1) / (y2 - y1 + 1e-12)
        inside ^= cond & (x < xc)
    return inside


def _star_vertices(points=5, outer=1.0, inner=0.46, dy=0.1):
    ang = -np.pi / 2 + np.arange(2 * points) * np.pi / points
    r = np.where(np.arange(2 * points) % 2 == 0, outer, inner)
    return list(zip(r * np.cos(ang), r * np.sin(ang) + dy))


_POLYGONS = {
    "triangle": [(0.0, -0.92), (0.97, 0.76), (-0.97, 0.76)],
    "star": _star_vertices(),
    "diamond": [(0.0, -1.0), (0.6, 0.0), (0.0, 1.0), (-0.6, 0.0)],
    "arrow": [(-0.95, -0.3), (0.1, -0.3), (0.1, -0.72), (0.97, 0.0), (0.1, 0.72), (0.1, 0.3), (-0.95, 0.3)],
}


def _object_mask(obj, x, y):
    """Inside test in the object's unit frame (x right, y down; the object fits the unit disk)."""
    if obj == "circle":
        return x * x + y * y <= 0.97 ** 2
    if obj == "square":
        return np.maximum(np.abs(x), np.abs(y)) <= 0.7
    if obj == "cross":
        w, h = 0.33, 0.95
        ax, ay = np.abs(x), np.abs(y)
        return ((ax <= w) & (ay <= h)) | ((ay <= w) & (ax <= h))
    if obj == "heart":
        # (u^2 + v^2 - 1)^3 - u^2 v^3 <= 0 with v pointing up; spans u in [-1.14, 1.14], v in [-1, 1.24]
        u, v = x * 1.22, -(y * 1.22) + 0.12
        return (u * u + v * v - 1) ** 3 - u * u * v ** 3 <= 0
    return _in_polygon(x, y, _POLYGONS[obj])


def _shift_and(a: np.ndarray, axis: int) -> np.ndarray:
    """``a`` AND its two neighbours along ``axis`` (beyond the border counts as False)."""
    out = a.copy()
    if axis == 0:
        out[1:] &= a[:-1]
        out[:-1] &= a[1:]
        out[0] = out[-1] = False
    else:
        out[:, 1:] &= a[:, :-1]
        out[:, :-1] &= a[:, 1:]
        out[:, 0] = out[:, -1] = False
    return out


def _erode(mask: np.ndarray, radius_px: float) -> np.ndarray:
    """Erosion by an octagon of radius ``radius_px`` (high-resolution pixels; alternating 3x3 square
    and plus-shaped steps, a close approximation of a disk); outside the image counts as outside."""
    inside = mask.copy()
    for i in range(max(1, int(round(radius_px)))):
        if i % 2 == 0:  # 3x3 square: separable
            inside = _shift_and(_shift_and(inside, 0), 1)
        else:  # plus: the centre and its 4 neighbours
            inside = _shift_and(inside, 0) & _shift_and(inside, 1)
    return inside


def _hsv_to_rgb(h, s, v):
    i = int(h * 6) % 6
    f = h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    return np.array([(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i], dtype=np.float32)


def desaturate(x: torch.Tensor, scale) -> torch.Tensor:
    """Images ``(N, 3, H, W)`` in [-1, 1] moved towards their luminance: saturation times
    ``scale`` (a number, or one per image)."""
    scale = torch.as_tensor(scale, dtype=x.dtype, device=x.device).reshape(-1, 1, 1, 1)
    lum = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    return lum + (x - lum) * scale


def _luminance(rgb):
    return float(0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2])


def _colour(rng, bg_level, dark_bg, hue=None):
    """A saturated colour whose luminance differs from the background by >= 0.35."""
    for _ in range(100):
        h = rng.uniform() if hue is None else hue % 1.0
        s = rng.uniform(0.6, 1.0)
        v = rng.uniform(0.8, 1.0) if dark_bg else rng.uniform(0.3, 0.65)
        rgb = _hsv_to_rgb(h, s, v)
        if abs(_luminance(rgb) - bg_level) >= 0.35:
            return rgb
        hue = None if hue is None else hue + 0.02
    return np.full(3, 1.0 if dark_bg else 0.0, dtype=np.float32)


def _gradient_partner(rng, fg, bg_level, dark_bg):
    """The far end of a gradient: a near-complementary hue contrasting with the background, the first
    of up to 20 draws >= 0.6 away from ``fg`` in RGB (else the most distant one)."""
    best, best_d = None, -1.0
    for _ in range(20):
        c = _colour(rng, bg_level, dark_bg, hue=_rgb_hue(fg) + rng.uniform(0.4, 0.6))
        d = float(np.linalg.norm(c - fg))
        if d > best_d:
            best, best_d = c, d
        if d >= 0.6:
            break
    return best


def render(object: Union[str, int], style: Union[str, int], rng=None) -> torch.Tensor:
    """One image of ``object`` drawn in ``style`` (names or ids), float32 ``(3, 32, 32)`` in [-1, 1].

    ``rng`` is a ``numpy.random.Generator``, an int seed, or ``None`` (seed 0); it draws the
    position, size, rotation, colours and pattern phase/angle (see the module docstring)."""
    obj, sty = _name(object, OBJECTS, "object"), _name(style, STYLES, "style")
    if rng is None or isinstance(rng, (int, np.integer)):
        rng = np.random.default_rng(0 if rng is None else int(rng))
    elif not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng: expected a numpy.random.Generator, an int seed or None, got {type(rng).__name__}")
    ss, size = SUPERSAMPLE, SHAPES_IMAGE_SIZE
    hi = size * ss
    px = 2.0 / size  # one final pixel in image units ([-1, 1] across)

    radius = rng.uniform(*SIZE_RANGE)
    room = max(0.0, 1.0 - radius - 0.04)
    cx, cy = rng.uniform(-room, room, size=2)
    theta = np.deg2rad(rng.uniform(-MAX_ROTATION_DEG, MAX_ROTATION_DEG))
    dark_bg = rng.uniform() < 0.5
    bg_level = rng.uniform(0.0, 0.2) if dark_bg else rng.uniform(0.8, 1.0)
    fg = _colour(rng, bg_level, dark_bg)

    c = (np.arange(hi, dtype=np.float32) + 0.5) / hi * 2 - 1
    gx, gy = np.meshgrid(c, c)  # image units, x right, y down
    dx, dy = gx - cx, gy - cy
    cos, sin = np.cos(theta), np.sin(theta)
    lx, ly = (cos * dx + sin * dy) / radius, (-sin * dx + cos * dy) / radius  # object frame
    mask = _object_mask(obj, lx, ly)

    img = np.empty((hi, hi, 3), dtype=np.float32)
    img[:] = bg_level
    hires_px = ss  # high-resolution pixels per final pixel

    def pattern_coords():
        """Coordinates in final pixels along a random direction (turning with the object)."""
        a = theta + rng.uniform(0, np.pi)
        u = (np.cos(a) * dx + np.sin(a) * dy) / px
        v = (-np.sin(a) * dx + np.cos(a) * dy) / px
        return u, v

    if sty == "solid":
        img[mask] = fg
    elif sty == "hollow":
        img[mask & ~_erode(mask, _HOLLOW_WIDTH * hires_px)] = fg
    elif sty == "gradient":
        fg2 = _gradient_partner(rng, fg, bg_level, dark_bg)
        a = rng.uniform(0, 2 * np.pi)
        proj = (np.cos(a) * dx + np.sin(a) * dy) / radius  # -1 .. 1 across the object
        w = np.clip((proj + 0.8) / 1.6, 0, 1)[..., None]
        blend = fg[None, None] * (1 - w) + fg2[None, None] * w
        img[mask] = blend[mask]
    else:
        u, v = pattern_coords()
        if sty == "striped":
            period = rng.uniform(*_STRIPE_PERIOD)
            on = np.mod(u / period + rng.uniform(), 1.0) < 0.5
        elif sty == "dotted":
            pu, pv = rng.uniform(size=2)
            fu = (np.mod(u / _GRID_PERIOD + pu, 1.0) - 0.5) * _GRID_PERIOD
            fv = (np.mod(v / _GRID_PERIOD + pv, 1.0) - 0.5) * _GRID_PERIOD
            on = fu * fu + fv * fv <= _DOT_RADIUS ** 2
        else:  # checkered
            pu, pv = rng.uniform(size=2)
            on = (np.floor(u / _GRID_PERIOD * 2 + pu).astype(np.int64)
                  + np.floor(v / _GRID_PERIOD * 2 + pv).astype(np.int64)) % 2 == 0
        edge = mask & ~_erode(mask, _OUTLINE_WIDTH * hires_px)
        img[(mask & on) | edge] = fg

    out = F.avg_pool2d(torch.from_numpy(img).permute(2, 0, 1)[None], ss)[0]
    return (out * 2.0 - 1.0).clamp_(-1.0, 1.0).contiguous()


def _rgb_hue(rgb):
    r, g, b = (float(c) for c in rgb)
    mx, mn = max(r, g, b), min(r, g, b)
    if mx == mn:
        return 0.0
    d = mx - mn
    if mx == r:
        h = ((g - b) / d) % 6
    elif mx == g:
        h = (b - r) / d + 2
    else:
        h = (r - g) / d + 4
    return h / 6.0


def _ids(values, names, what):
    if values is None:
        return list(range(len(names)))
    ids = [names.index(_name(v, names, what)) for v in values]
    if not ids:
        raise ValueError(f"{what}s: expected at least one {what}, got an empty list")
    return ids


def generate(n: int, seed: int = 0, objects: Optional[Sequence] = None, styles: Optional[Sequence] = None
             ) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images [n, 3, 32, 32] in [-1, 1], object_ids [n], style_ids [n])``, int64 ids into
    ``OBJECTS`` / ``STYLES``. Image ``i`` draws combination ``i % (len(objects) * len(styles))``
    of the given objects and styles (object-major; default: all of them) with
    ``numpy.random.default_rng([seed, i])``."""
    if int(n) < 0:
        raise ValueError(f"n: expected a non-negative number of images, got {n}")
    if int(seed) < 0:
        raise ValueError(f"seed: expected a non-negative integer, got {seed}")
    obj_ids, sty_ids = _ids(objects, OBJECTS, "object"), _ids(styles, STYLES, "style")
    combos = [(o, s) for o in obj_ids for s in sty_ids]
    images = torch.empty(int(n), 3, SHAPES_IMAGE_SIZE, SHAPES_IMAGE_SIZE)
    oi, si = torch.empty(int(n), dtype=torch.int64), torch.empty(int(n), dtype=torch.int64)
    for i in range(int(n)):
        o, s = combos[i % len(combos)]
        images[i] = render(o, s, np.random.default_rng([int(seed), i]))
        oi[i], si[i] = o, s
    return images, oi, si


@lru_cache(maxsize=2)
def _split(split: str):
    per = {"train": TRAIN_PER_COMBO, "heldout": HELDOUT_PER_COMBO}[split]
    return generate(per * NUM_COMBOS, SPLIT_SEEDS[split])


def load_split(split: str = "train") -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(images, object_ids, style_ids)`` of the fixed split ``"train"`` (9,600 images) or
    ``"heldout"`` (1,200), generated once per process and cached (returned as clones)."""
    if split not in SPLIT_SEEDS:
        raise ValueError(f"split: expected 'train' or 'heldout', got {split!r}")
    return tuple(t.clone() for t in _split(split))
