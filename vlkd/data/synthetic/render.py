"""Procedural rendering of SynthActions clips and captioned still frames, with numpy only.

Scenes
------
A scene is drawn from a random generator before anything is rasterised: the
named object (colour from the style's palette, jittered; random size,
orientation, start position, speed, timing, slow drift and wobble), a nuisance
backdrop (solid, gradient, value-noise, stripes, checker or a plain floor,
with random desaturated colours kept away from the object's colour), for static
classes the context's ground (grass, sand, rippling water, snow) below a random
horizon, up to a few grey or brown distractor dots and bars moving in random
directions, a global brightness change and per-pixel noise.  The draws do not
depend on the frame size (textures come from a stored seed), so a scene can be
rendered at any resolution.

Time, motion and blur
---------------------
A clip covers time ``t`` in [0, 1].  A motion runs between a random start time
in [0, 0.1] and a random end time in [0.9, 1].  Every motion *eases in*: its
progress is the cube of the elapsed fraction, so it starts slowly and speeds
up, as a pushed or falling object does.
Frame ``i`` of ``T`` shows ``t = (i + 0.5) / T`` averaged over three sub-samples
spanning one frame interval, i.e. motion blur, so a frame shows *how*
something moves (a horizontal smear, a halo of growth, a rotational smudge)
but hardly which way.

Twins: direction without a time-reversal shortcut
-------------------------------------------------
The backward class of an axis ("moving right", "shrinking", "closing", ...)
draws exactly the random scene its forward twin would draw from the same
generator (object, size, path, timing, nuisance) and runs the motion the other
way.  Because every motion eases in, this is *not* the forward clip played
backwards: a reversed "moving left" clip would slow down towards the right,
whereas "moving right" speeds up towards the right.  That matters because a
student whose temporal modelling is blind to the order of its neighbours
(FROSTER's neighbour-frame attention sees the previous and the next frame as
one unordered set, and mean-pooling frames sees no order at all) can never
tell a clip from its exact time reversal, but can tell "speeding up to the
right" from "speeding up to the left" (the farther neighbour lies ahead).

Why every axis, and why cubic: in format 2 only translations and rotations
eased (as a square) and scale, aperture and opacity progressed linearly.
Linear twins are each other's time reversal in distribution, so for both
FROSTER's student and the fine-tuning baseline half of the temporal classes
were provably at chance; and the squared ease with motions spanning as little
as half the clip was too weak a cue to learn from 16 shots (training top-1 of
every student stayed at the static-classes-plus-chance level).  Cubic easing
over at least 80 % of the clip is learnable by both students in a few epochs.

Single frames of twins stay alike: the same scenes, colours, shapes and paths.
Twins differ only in where along its (randomly placed) path the object spends
its time: near the start of its motion.

Stills and captions (for a still-image CLIP teacher)
----------------------------------------------------
:func:`render_still` renders one frame of a random scene of the given concepts
and captions it: a static scene at a uniformly random time, a motion at a
uniformly random point of its progress (see below).  These stills play the part of
web image-text data: a small CLIP is pretrained on them and must then act as
the frozen teacher for video students.  The captions are designed so that

* every word of every class name (base, novel, and both styles' worlds) is
  taught: captions always name colour, shape and the context or motion phrase,
  and :func:`~vlkd.data.synthetic.world.random_concepts` draws compositions
  beyond any world's classes, as the web covers far more than a benchmark;
* static classes are learnable from a still: colour, shape and ground are all
  visible, so the teacher should score far above chance on them, base and
  novel alike, since novel names are new compositions of taught words;
* temporal twins are hard to separate from a still: a caption of a frame from
  "red ball moving left" says "moving left" (as a web caption of a video
  thumbnail would), but twin clips draw the same scenes, and a still shows a
  uniformly random state of the motion (size, opening, opacity, place on the
  path), the same distribution for both twins.  (A still at a uniformly random
  *time* would not: an eased motion spends most of its time near its start, so
  stills of a growing object would mostly show it small and those of its
  shrinking twin big, a direction cue a still-image teacher should not get.)
  So the direction word is not tied to the pixels of one frame: the teacher
  learns the words but cannot see them, and averaging its frame embeddings
  over a clip leaves it at or below chance between twins, which is CLIP's weakness on
  Something-Something that distillation into a video student must overcome.
  The motion *axis* is visible (blur, partial opening, translucency), so the
  teacher can still narrow a temporal clip down to its twin pair;
* direction words still get a grounded meaning: where the object is on the
  frame, a caption may say so ("seen on the left", "seen up high", "seen down
  low"), so "left", "right", "up" and "down" have distinct, image-grounded
  text embeddings instead of collapsing onto each other.  This leaks little
  direction: where a path is placed is random, and a still does not show where
  the path starts.

Public functions return uint8 RGB arrays: :func:`render_clip` ``(T, H, W, 3)``,
:func:`render_still` ``(H, W, 3)`` plus the caption.
"""

from __future__ import annotations

import colorsys
import math
from dataclasses import dataclass, field

import numpy as np

from vlkd.data.synthetic.world import (
    ActionClass,
    Concepts,
    Style,
    get_style,
    parse_class_name,
    random_concepts,
)
from vlkd.errors import ConfigError

__all__ = ["DEFAULT_FRAMES", "DEFAULT_SIZE", "render_clip", "render_still", "as_concepts"]

DEFAULT_FRAMES = 16
DEFAULT_SIZE = 64
# Sub-samples per frame for motion blur: odd, so the middle one is the frame's own time.
_BLUR_SAMPLES = 3
_TAU = 2 * math.pi
# Every motion eases in: progress is the elapsed fraction of its ramp to this power.
_EASE_POWER = 3

def as_concepts(class_or_concepts: ActionClass | Concepts | str | None, rng: np.random.Generator | None = None
                ) -> Concepts:
    """Concepts from a class, a class name or concepts; ``None`` draws random ones from ``rng``."""
    if isinstance(class_or_concepts, Concepts):
        return class_or_concepts
    if isinstance(class_or_concepts, ActionClass):
        return class_or_concepts.concepts
    if isinstance(class_or_concepts, str):
        return parse_class_name(class_or_concepts)
    if class_or_concepts is None and rng is not None:
        return random_concepts(rng)
    raise ConfigError(f"expected an ActionClass, Concepts or class name, got {class_or_concepts!r}")


def render_clip(
    rng: np.random.Generator,
    action: ActionClass | Concepts | str,
    style: str | Style = "flat",
    size: int = DEFAULT_SIZE,
    frames: int = DEFAULT_FRAMES,
) -> np.ndarray:
    """A clip of ``action`` as uint8 RGB frames ``(frames, size, size, 3)``.

    All randomness comes from ``rng``, so a seeded generator gives identical
    frames.  With equally seeded generators, "red ball moving right" shows the
    scene of "red ball moving left" with the motion running the other way
    (module docstring).
    """
    concepts = as_concepts(action)
    _check_positive(size=size, frames=frames)
    scene = _sample_class_scene(rng, concepts, style)
    times = (np.arange(frames) + 0.5) / frames
    return _render(scene, size, times, exposure=1.0 / frames, rng=rng)


def render_still(
    rng: np.random.Generator,
    class_or_concepts: ActionClass | Concepts | str | None = None,
    style: str | Style = "flat",
    size: int = DEFAULT_SIZE,
) -> tuple[np.ndarray, str]:
    """One captioned frame ``(image uint8 (size, size, 3), caption)`` of a random scene.

    ``class_or_concepts`` may be a class, a class name, :class:`Concepts`, or
    ``None`` for a random composition of the whole vocabulary.  A pretraining
    set should draw stills of every style, so the teacher sees both domains.  The frame is
    taken at a uniformly random time of the clip, blurred as a clip frame of
    :data:`DEFAULT_FRAMES` frames is; the caption names colour, shape and
    phrase and sometimes size and position (see the module docstring).
    """
    concepts = as_concepts(class_or_concepts, rng)
    _check_positive(size=size)
    scene = _sample_class_scene(rng, concepts, style)
    time = np.array([_still_time(scene.main, rng.random())])
    image = _render(scene, size, time, exposure=1.0 / DEFAULT_FRAMES, rng=rng)[0]
    pose = scene.main.pose(time)
    return image, _caption(rng, concepts, float(pose.x[0]), float(pose.y[0]), float(pose.radius[0]))


def _still_time(main: "_Object", uniform: float) -> float:
    """The time of a still: uniform for static scenes, uniform in *progress* for motions.

    A frame taken at a uniformly random time of an eased motion mostly shows
    its start (progress is the cube of elapsed time), so a still of a growing
    object would mostly show it small and one of its shrinking twin big: a
    direction cue no still-image model should get.  Drawing the progress
    uniformly instead gives both twins the same distribution of states (size,
    opening, opacity, angle, position along the path), like thumbnails taken
    anywhere along an action.
    """
    if main.axis is None:
        return uniform
    start, end = main.ramp
    return start + (end - start) * uniform ** (1.0 / _EASE_POWER)


# --------------------------------------------------------------------------- captions


def _caption(rng: np.random.Generator, concepts: Concepts, x: float, y: float, radius: float) -> str:
    """A caption that always names colour, shape and phrase, sometimes size and where the object is."""
    subject = f"{concepts.colour} {concepts.shape}"
    size_word = "small" if radius < 0.09 else "big" if radius > 0.18 else None
    if size_word is not None and rng.random() < 0.5:
        subject = f"{size_word} {subject}"
    places = [place for place, here in (("on the left", x < 0.38), ("on the right", x > 0.62),
                                        ("up high", y < 0.38), ("down low", y > 0.62)) if here]
    text = f"{_article(subject)} {subject} {concepts.phrase}"
    if rng.random() < 1 / 3:
        text = f"a photo of {text}"
    if places and rng.random() < 0.6:
        text = f"{text}, seen {places[rng.integers(len(places))]}"
    return text


def _article(phrase: str) -> str:
    return "an" if phrase[0] in "aeiou" else "a"


# --------------------------------------------------------------------------- scene description


@dataclass
class _Pose:
    """An object's pose at N times; every field is an array of shape (N,)."""

    x: np.ndarray
    y: np.ndarray
    radius: np.ndarray
    angle: np.ndarray  # radians; increasing is clockwise on screen (image y points down)
    aperture: np.ndarray  # half-angle of the mouth cut out of the shape, radians
    opacity: np.ndarray


@dataclass
class _Object:
    """A shape and its motion over the clip; positions and sizes are fractions of the frame side."""

    shape: str  # a class shape, or "dot" / "bar" for distractors
    colour: np.ndarray
    x: float
    y: float
    radius: float
    angle: float
    drift: tuple[float, float] = (0.0, 0.0)  # displacement over the whole clip
    wobble: tuple[float, float, float] = (0.0, 1.0, 0.0)  # amplitude, cycles per clip, phase
    axis: str | None = None  # motion axis of a temporal class
    amount: float = 0.0  # the axis's extent: distance, angle, radius change or mouth half-angle
    ramp: tuple[float, float] = (0.0, 1.0)  # start and end time of the motion
    in_front: bool = True  # distractors: drawn over the named object or under it
    backward: bool = False  # run the axis's motion in its backward direction

    def pose(self, times: np.ndarray) -> _Pose:
        start, end = self.ramp
        # Ease-in (cubic): the motion speeds up, so a clip and its time reversal
        # differ even to a model blind to the order of neighbouring frames.
        progress = np.clip((times - start) / (end - start), 0.0, 1.0) ** _EASE_POWER
        amplitude, cycles, phase = self.wobble
        wobble = amplitude * np.sin(_TAU * cycles * times + phase)
        x = self.x + self.drift[0] * (times - 0.5) + wobble
        y = self.y + self.drift[1] * (times - 0.5) + wobble * 0.5
        ones = np.ones_like(times)
        radius, angle, aperture, opacity = self.radius * ones, self.angle * ones, 0.0 * ones, ones
        sign = -1.0 if self.backward else 1.0
        # How far along the forward direction the object is: the backward direction
        # starts where the forward one ends (big, open, visible) and heads back.
        forward_state = 1.0 - progress if self.backward else progress
        if self.axis == "horizontal":
            x = x + sign * self.amount * (0.5 - progress)  # forward: leftwards
        elif self.axis == "vertical":
            y = y + sign * self.amount * (0.5 - progress)  # forward: upwards (image y points down)
        elif self.axis == "scale":
            radius = self.radius + self.amount * forward_state
        elif self.axis == "rotation":
            angle = self.angle + sign * self.amount * progress
        elif self.axis == "aperture":
            aperture = self.amount * forward_state
        elif self.axis == "opacity":
            opacity = forward_state
        return _Pose(x, y, radius, angle, aperture, opacity)


@dataclass
class _Backdrop:
    """Everything behind the objects: a nuisance background and, optionally, a ground band."""

    kind: str  # solid, gradient, noise, stripes, checker
    colours: tuple[np.ndarray, np.ndarray]
    angle: float
    period: float
    texture_seed: int
    horizon: float | None = None  # top of the ground band as a fraction of the height
    ground: str | None = None  # a context key, or "floor" for a plain nuisance floor
    ground_colour: np.ndarray | None = None
    wave_speed: float = 0.0  # water ripples, cycles per clip (either sign)


@dataclass
class _Scene:
    style: Style
    backdrop: _Backdrop
    main: _Object
    distractors: list[_Object] = field(default_factory=list)
    gain: float = 1.0
    offset: float = 0.0
    noise: float = 0.0


def _sample_class_scene(rng: np.random.Generator, concepts: Concepts, style: str | Style) -> _Scene:
    """The scene of ``concepts``: a backward class draws its forward twin's scene and runs it the other way."""
    scene = _sample_scene(rng, concepts.twin() if concepts.reversed else concepts, get_style(style))
    scene.main.backward = concepts.reversed
    return scene


def _sample_scene(rng: np.random.Generator, concepts: Concepts, style: Style) -> _Scene:
    """Draw every random choice of a scene showing ``concepts`` (forward direction)."""
    main = _sample_main_object(rng, concepts, style)
    backdrop = _sample_backdrop(rng, style, main.colour, concepts.context)
    if concepts.context is not None:
        # Stand the object on (or in) the ground.
        main.y = backdrop.horizon + rng.uniform(-0.02, 0.08)
    distractors = [_sample_distractor(rng) for _ in range(rng.integers(style.distractors + 1))]
    return _Scene(
        style=style,
        backdrop=backdrop,
        main=main,
        distractors=distractors,
        gain=rng.uniform(0.85, 1.15),
        offset=rng.uniform(-0.05, 0.05),
        noise=rng.uniform(*style.noise),
    )


def _sample_main_object(rng: np.random.Generator, concepts: Concepts, style: Style) -> _Object:
    colour = np.clip(np.asarray(style.palette[concepts.colour]) + rng.normal(0.0, 0.03, 3), 0.0, 1.0)
    axis = concepts.axis
    radius = rng.uniform(0.10, 0.17)
    amount = 0.0
    if axis in ("horizontal", "vertical"):
        amount = rng.uniform(0.30, 0.55)
    elif axis == "scale":
        radius = rng.uniform(0.05, 0.08)
        amount = rng.uniform(0.10, 0.15)  # grows to 0.15-0.23
    elif axis == "rotation":
        # At most 120 degrees over at least half the clip: under 36 degrees per frame even at 8 frames,
        # so a star (5-fold symmetric) never aliases into the opposite rotation.
        amount = rng.uniform(math.radians(60), math.radians(120))
    elif axis == "aperture":
        amount = rng.uniform(math.radians(30), math.radians(55))
    drift_size = rng.uniform(0.0, 0.08 if axis is not None else 0.03)
    drift_direction = rng.uniform(0.0, _TAU)
    drift = (drift_size * math.cos(drift_direction), drift_size * math.sin(drift_direction))
    # Keep the whole path inside the frame, allowing the object to be cut by an edge a little.
    margin = 0.8 * (radius + (amount if axis == "scale" else 0.0)) + drift_size / 2 + 0.01
    travel = amount if axis in ("horizontal", "vertical") else 0.0
    along = rng.uniform(margin + travel / 2, 1 - margin - travel / 2)
    across = rng.uniform(margin, 1 - margin)
    x, y = (across, along) if axis == "vertical" else (along, across)
    start = rng.uniform(0.0, 0.1)
    end = 1.0 - rng.uniform(0.0, 0.1)
    return _Object(
        shape=concepts.shape,
        colour=colour,
        x=x,
        y=y,
        radius=radius,
        angle=rng.uniform(0.0, _TAU),
        drift=drift,
        wobble=(rng.uniform(0.0, 0.01), rng.uniform(0.5, 2.0), rng.uniform(0.0, _TAU)),
        axis=axis,
        amount=amount,
        ramp=(start, end),
    )


def _sample_backdrop(rng: np.random.Generator, style: Style, avoid: np.ndarray, context: str | None) -> _Backdrop:
    kinds = [kind for kind in style.backgrounds if kind != "floor" or context is None]
    kind = kinds[rng.integers(len(kinds))]
    colours = (_nuisance_colour(rng, avoid), _nuisance_colour(rng, avoid))
    backdrop = _Backdrop(
        kind="gradient" if kind == "floor" else kind,
        colours=colours,
        angle=rng.uniform(0.0, _TAU),
        period=rng.uniform(0.08, 0.25),
        texture_seed=int(rng.integers(2**31)),
    )
    if context is not None or kind == "floor":
        backdrop.horizon = rng.uniform(0.5, 0.72)
        backdrop.ground = context or "floor"
        if context is None:
            backdrop.ground_colour = _hsv(rng.uniform(), rng.uniform(0.0, 0.25), rng.uniform(0.2, 0.55))
        else:
            backdrop.ground_colour = np.clip(np.asarray(style.grounds[context]) + rng.normal(0.0, 0.03, 3), 0, 1)
        backdrop.wave_speed = rng.choice([-1.0, 1.0]) * rng.uniform(0.5, 1.5)
    return backdrop


def _nuisance_colour(rng: np.random.Generator, avoid: np.ndarray) -> np.ndarray:
    """A desaturated random colour at a clear distance from the named object's colour."""
    for _ in range(20):
        colour = _hsv(rng.uniform(), rng.uniform(0.0, 0.35), rng.uniform(0.2, 0.85))
        if np.abs(colour - avoid).sum() > 0.45:
            break
    return colour


def _sample_distractor(rng: np.random.Generator) -> _Object:
    """A small grey or brown dot or bar drifting in a random direction: motion that names nothing."""
    direction, speed = rng.uniform(0.0, _TAU), rng.uniform(0.0, 0.5)
    return _Object(
        shape=("dot", "bar")[rng.integers(2)],
        colour=_hsv(rng.uniform(0.05, 0.11), rng.uniform(0.0, 0.25), rng.uniform(0.25, 0.75)),
        x=rng.uniform(0.05, 0.95),
        y=rng.uniform(0.05, 0.95),
        radius=rng.uniform(0.025, 0.05),
        angle=rng.uniform(0.0, _TAU),
        drift=(speed * math.cos(direction), speed * math.sin(direction)),
        in_front=bool(rng.random() < 0.3),
    )


def _hsv(hue: float, saturation: float, value: float) -> np.ndarray:
    return np.asarray(colorsys.hsv_to_rgb(hue, saturation, value))


# --------------------------------------------------------------------------- rasterisation


def _render(scene: _Scene, size: int, times: np.ndarray, exposure: float, rng: np.random.Generator) -> np.ndarray:
    """Frames of ``scene`` at ``times`` as uint8 ``(N, size, size, 3)``; per-pixel noise comes from ``rng``."""
    grid = _pixel_grid(size)
    image = _draw_backdrop(scene.backdrop, scene.style, grid, times)
    image = np.broadcast_to(image, (len(times), size, size, 3)).astype(np.float32)
    for distractor in (d for d in scene.distractors if not d.in_front):
        _draw_object(image, distractor, scene.style, grid, times, exposure=0.0)
    _draw_object(image, scene.main, scene.style, grid, times, exposure)
    for distractor in (d for d in scene.distractors if d.in_front):
        _draw_object(image, distractor, scene.style, grid, times, exposure=0.0)
    image = image * scene.gain + scene.offset
    if scene.noise > 0:
        image += rng.normal(0.0, scene.noise, image.shape).astype(np.float32)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


def _pixel_grid(size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates (x, y) in frame units, each ``(size, size)``."""
    centres = ((np.arange(size) + 0.5) / size).astype(np.float32)
    return centres[None, :].repeat(size, 0), centres[:, None].repeat(size, 1)


def _draw_object(image: np.ndarray, obj: _Object, style: Style, grid, times: np.ndarray, exposure: float) -> None:
    """Composite ``obj`` into ``image`` (N, H, W, 3) in place, blurred over ``exposure`` around each time."""
    frames, size = image.shape[0], image.shape[1]
    offsets = exposure * (np.linspace(0.0, 1.0, _BLUR_SAMPLES) - 0.5) if exposure > 0 else np.zeros(1)
    pose = obj.pose((times[:, None] + offsets[None, :]).ravel())
    u, v = _local_coordinates(grid, pose)
    radius = pose.radius[:, None, None]
    distance = _signed_distance(obj.shape, u, v, radius)
    visible = _mouth_mask(u, v, pose.aperture[:, None, None], size) * pose.opacity[:, None, None]

    def blurred_alpha(edge_distance: np.ndarray) -> np.ndarray:
        # Motion blur: the mean coverage over the exposure window's sub-samples.
        return (_coverage(edge_distance, size) * visible).reshape(frames, -1, size, size).mean(axis=1)

    fill_alpha = blurred_alpha(distance)
    outline = style.outline if obj.shape not in ("dot", "bar") else 0.0
    if outline > 0:
        # A dark rim: the whole shape in a dark shade, then the fill inset by the outline width.
        _blend(image, fill_alpha, obj.colour * 0.3)
        fill_alpha = blurred_alpha(distance + outline * radius)
    _blend(image, fill_alpha, _fill(obj, style, u, v, radius, frames))


def _local_coordinates(grid, pose: _Pose) -> tuple[np.ndarray, np.ndarray]:
    """Pixel coordinates in each pose's object frame ``(N, H, W)``: centred, rotated by -angle."""
    x, y = grid
    dx = x[None] - pose.x[:, None, None].astype(np.float32)
    dy = y[None] - pose.y[:, None, None].astype(np.float32)
    cos = np.cos(pose.angle)[:, None, None].astype(np.float32)
    sin = np.sin(pose.angle)[:, None, None].astype(np.float32)
    return cos * dx + sin * dy, -sin * dx + cos * dy


def _signed_distance(shape: str, u: np.ndarray, v: np.ndarray, radius: np.ndarray) -> np.ndarray:
    """Approximate signed distance to the shape's edge (negative inside), in frame units.

    Sizes are chosen so that all shapes of one ``radius`` cover similar areas.
    """
    if shape in ("ball", "dot"):
        return np.hypot(u, v) - radius
    if shape == "square":
        return np.maximum(np.abs(u), np.abs(v)) - 0.85 * radius
    if shape == "bar":
        return np.maximum(np.abs(u) - 1.4 * radius, np.abs(v) - 0.35 * radius)
    if shape == "triangle":
        # Equilateral, circumradius 1.3 r: the inradius is half of that, on each of three edge normals.
        normals = (math.pi / 2, math.pi / 2 + _TAU / 3, math.pi / 2 + 2 * _TAU / 3)
        edges = [u * math.cos(a) + v * math.sin(a) for a in normals]
        return np.maximum(np.maximum(edges[0], edges[1]), edges[2]) - 0.65 * radius
    if shape == "star":
        # Five points: the edge radius goes from 1.4 r at the tips to 0.55 r between them.
        turns = (np.arctan2(v, u) + math.pi / 2) * (5 / _TAU)
        tip = np.abs(turns - np.floor(turns) - 0.5) * 2  # 1 at a tip, 0 between tips
        return np.hypot(u, v) - radius * (0.55 + 0.85 * tip)
    raise ValueError(f"unknown shape {shape!r}")


def _coverage(distance: np.ndarray, size: int) -> np.ndarray:
    """Anti-aliased coverage of a pixel from its signed distance (a one-pixel ramp)."""
    return np.clip(0.5 - distance * size, 0.0, 1.0)


def _mouth_mask(u: np.ndarray, v: np.ndarray, aperture: np.ndarray, size: int) -> np.ndarray:
    """1 outside a wedge of half-angle ``aperture`` around the object's +u axis, fading to 0 inside it."""
    if not np.any(aperture > 0):
        return np.ones(1, dtype=np.float32)
    rho = np.hypot(u, v)
    edge_distance = rho * np.sin(np.abs(np.arctan2(v, u)) - aperture)  # > 0 outside the wedge
    # A wedge narrower than a pixel removes only part of it (and nothing when closed).
    wedge_width = np.clip(2 * rho * np.sin(aperture) * size, 0.0, 1.0)
    return 1.0 - np.clip(0.5 - edge_distance * size, 0.0, 1.0) * wedge_width


def _fill(obj: _Object, style: Style, u: np.ndarray, v: np.ndarray, radius: np.ndarray, frames: int) -> np.ndarray:
    """The object's colour: uniform, or (striped style) stripes fixed to the object, ``(N, H, W, 3)`` or ``(3,)``."""
    if style.fill == "flat" or obj.shape in ("dot", "bar"):
        return obj.colour
    # Stripes from the middle blur sub-sample only: the pattern is sharp, the edges blurred.
    middle = slice(u.shape[0] // frames // 2, None, u.shape[0] // frames)
    stripes = 0.5 + 0.5 * np.sin(_TAU * u[middle] / (0.45 * radius[middle]))
    return obj.colour * (1.0 - 0.3 * stripes[..., None])


def _blend(image: np.ndarray, alpha: np.ndarray, colour: np.ndarray) -> None:
    alpha = alpha[..., None]
    image *= 1.0 - alpha
    image += alpha * colour


# --------------------------------------------------------------------------- backdrops


def _draw_backdrop(backdrop: _Backdrop, style: Style, grid, times: np.ndarray) -> np.ndarray:
    """The backdrop ``(1 or N, H, W, 3)``: animated only when it has water."""
    x, y = grid
    size = x.shape[0]
    texture_rng = np.random.default_rng(backdrop.texture_seed)
    first, second = backdrop.colours
    along = (x - 0.5) * math.cos(backdrop.angle) + (y - 0.5) * math.sin(backdrop.angle)
    if backdrop.kind == "solid":
        mix = np.zeros_like(x)
    elif backdrop.kind == "gradient":
        mix = np.clip(along + 0.5, 0.0, 1.0)
    elif backdrop.kind == "noise":
        mix = _value_noise(texture_rng, size, cells=4)
    elif backdrop.kind == "stripes":
        mix = 0.5 + 0.5 * np.sin(_TAU * along / backdrop.period)
    elif backdrop.kind == "checker":
        across = -(x - 0.5) * math.sin(backdrop.angle) + (y - 0.5) * math.cos(backdrop.angle)
        mix = ((np.floor(along / backdrop.period) + np.floor(across / backdrop.period)) % 2).astype(np.float32)
    else:
        raise ValueError(f"unknown background kind {backdrop.kind!r}")
    image = (first * (1 - mix[..., None]) + second * mix[..., None])[None].astype(np.float32)
    if backdrop.ground is None:
        return image
    ground = _draw_ground(backdrop, style, grid, times, texture_rng)
    below = np.clip((y - backdrop.horizon) * size + 0.5, 0.0, 1.0)[None, ..., None]
    return image * (1 - below) + ground * below


def _draw_ground(backdrop: _Backdrop, style: Style, grid, times: np.ndarray, texture_rng) -> np.ndarray:
    """The ground band's colours over the whole frame ``(1 or N, H, W, 3)`` (masked by the caller)."""
    x, y = grid
    size = x.shape[0]
    colour = backdrop.ground_colour.astype(np.float32)
    strength = style.ground_texture
    if backdrop.ground == "water":
        # Ripples drifting up or down: the wave lines are what make water water in every style.
        phase = 9.0 * y[None] + 0.3 * np.sin(_TAU * 2.0 * x[None]) + backdrop.wave_speed * times[:, None, None]
        crest = (np.sin(_TAU * phase) > 0.75).astype(np.float32)
        return colour * (1 - 0.35 * crest[..., None]) + 0.35 * crest[..., None]
    if backdrop.ground == "grass" and strength > 0:
        blades = _value_noise(texture_rng, size, cells=(3, 24))  # tall, thin streaks
        return (colour * (1 - strength * 1.5 * blades[..., None]))[None]
    if backdrop.ground in ("sand", "snow") and strength > 0:
        speckle = texture_rng.random((size, size)).astype(np.float32)
        return (colour * (1 - strength * speckle[..., None]))[None]
    return np.broadcast_to(colour, (1, size, size, 3))


def _value_noise(rng: np.random.Generator, size: int, cells: int | tuple[int, int]) -> np.ndarray:
    """Smooth random values in [0, 1] ``(size, size)``: a coarse random grid, smoothly interpolated."""
    rows, columns = (cells, cells) if isinstance(cells, int) else cells
    lattice = rng.random((rows + 1, columns + 1)).astype(np.float32)
    row_pos = (np.arange(size) + 0.5) / size * rows
    col_pos = (np.arange(size) + 0.5) / size * columns
    r0, c0 = np.floor(row_pos).astype(int), np.floor(col_pos).astype(int)
    fr, fc = _smoothstep(row_pos - r0)[:, None], _smoothstep(col_pos - c0)[None, :]
    top = lattice[r0][:, c0] * (1 - fc) + lattice[r0][:, c0 + 1] * fc
    bottom = lattice[r0 + 1][:, c0] * (1 - fc) + lattice[r0 + 1][:, c0 + 1] * fc
    return (top * (1 - fr) + bottom * fr).astype(np.float32)


def _smoothstep(t: np.ndarray) -> np.ndarray:
    return t * t * (3 - 2 * t)


def _check_positive(**values: int) -> None:
    for name, value in values.items():
        if not isinstance(value, int) or value < 1:
            raise ConfigError(f"{name} must be a positive integer, got {value!r}")
