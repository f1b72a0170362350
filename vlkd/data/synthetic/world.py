"""The SynthActions world: vocabulary, action classes, base/novel halves and render styles.

Vocabulary and compositions
---------------------------
Every class is a composition of three concepts, and its name is their words::

    <colour> <shape> <context phrase>      static:   "red square on grass"
    <colour> <shape> <motion phrase>       temporal: "red ball moving left"

* colours: red, green, blue, yellow, purple, orange;
* shapes: ball, square, triangle, star;
* contexts (static classes; the scene has that ground): on grass, on sand,
  in water, on snow;
* motions (temporal classes), six *axes* of two opposite directions each:
  moving left / right, moving up / down, growing / shrinking, rotating
  clockwise / counterclockwise, opening / closing, appearing / disappearing.

A **static** class is recognisable from any single frame: its object's colour
and shape plus the ground it stands on.  A **temporal** class has a *twin*:
the class with the same colour, shape and axis but the opposite direction.
The renderer draws a twin's clip from the same scene as the other's (same
nuisance draws) with the motion run the other way, so the twins differ in
temporal order, as SSv2's "pushing left" and "pushing right" do, and a single
frame hardly tells them apart (the renderer's docstring gives the details).

Halves
------
Twins are always in the same half: the protocol classifies base videos among
base names only, so a twin in the other half would make its partner trivially
separable.  Each half has six twin pairs (one per axis) and twelve static
classes, 24 classes in all, so both halves hold single-frame and temporal
classes (50 % temporal).

Most novel classes are new *compositions* of words that occur in base names
(novel "green star moving left" reuses "green" and "star" from base static
classes and "moving left" from base "red ball moving left"), so a model can
only name them through compositional text.  Some are not:
:data:`NOVEL_ONLY_WORDS` (the colour "orange" and the ground "snow") occur in
no base class of either world, the way Kinetics' novel classes show objects
and scenes that no base class shows.  Fine-tuning on base classes alone never
sees them named, which is where a student forgets what its CLIP teacher knew
and where distillation from the frozen teacher pays (the still-image teacher
learnt every word, see :mod:`vlkd.data.synthetic.render`).  Every motion
phrase and shape occurs in base names, so direction learnt on base twins can
carry over to novel ones.  Within a half no two twin pairs share colour and
shape, so an image model that sees colour, shape and motion blur can narrow a
temporal clip down to its twin pair but no further.

Styles and the cross-dataset protocol
-------------------------------------
A :class:`Style` sets how a world looks (palette, backgrounds, object fill,
outline, ground textures, noise).  Each style also has its own world: the
"textured" world shares 36 of the "flat" world's 48 classes and replaces the
other 12 (three twin pairs, six static classes) with compositions the flat
world lacks.  Training on flat and evaluating zero-shot on textured therefore
tests both a domain shift and partly unseen classes, like Kinetics to UCF101.
Both worlds draw on the same vocabulary, so one still-image teacher covers both.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Literal

import numpy as np

from vlkd.errors import ConfigError

__all__ = [
    "COLOURS",
    "SHAPES",
    "CONTEXTS",
    "MOTION_AXES",
    "MOTIONS",
    "NOVEL_ONLY_WORDS",
    "STYLES",
    "ActionClass",
    "Concepts",
    "MotionAxis",
    "Style",
    "World",
    "build_world",
    "parse_class_name",
    "random_concepts",
    "vocabulary",
]

Group = Literal["static", "temporal"]
Half = Literal["base", "novel"]

COLOURS: tuple[str, ...] = ("red", "green", "blue", "yellow", "purple", "orange")
SHAPES: tuple[str, ...] = ("ball", "square", "triangle", "star")
# context key -> the phrase used in class names and captions
CONTEXTS: dict[str, str] = {"grass": "on grass", "sand": "on sand", "water": "in water", "snow": "on snow"}
# Words that only novel class names use, in both worlds (the module docstring says why).
NOVEL_ONLY_WORDS: frozenset[str] = frozenset({"orange", "snow"})


@dataclass(frozen=True)
class MotionAxis:
    """A kind of motion with two opposite directions.

    ``forward`` is the phrase for progress 0 -> 1 of the motion, ``backward`` for
    the motion run the other way (also easing in; not the reversed clip).  ``shapes`` are the shapes on which the motion is visible
    (a rotating ball looks like a still ball).
    """

    name: str
    forward: str
    backward: str
    shapes: tuple[str, ...] = SHAPES


MOTION_AXES: dict[str, MotionAxis] = {
    axis.name: axis
    for axis in (
        MotionAxis("horizontal", "moving left", "moving right"),
        MotionAxis("vertical", "moving up", "moving down"),
        MotionAxis("scale", "growing", "shrinking"),
        MotionAxis("rotation", "rotating clockwise", "rotating counterclockwise", ("square", "triangle", "star")),
        MotionAxis("aperture", "opening", "closing"),
        MotionAxis("opacity", "appearing", "disappearing"),
    )
}

# motion phrase -> (axis name, reversed?)
MOTIONS: dict[str, tuple[str, bool]] = {
    phrase: (axis.name, reverse)
    for axis in MOTION_AXES.values()
    for phrase, reverse in ((axis.forward, False), (axis.backward, True))
}


@dataclass(frozen=True)
class Concepts:
    """What a scene shows: an object's colour and shape, plus either a context or a motion.

    Exactly one of ``context`` (a key of :data:`CONTEXTS`) and ``motion`` (a
    phrase of :data:`MOTIONS`) is set.
    """

    colour: str
    shape: str
    context: str | None = None
    motion: str | None = None

    def __post_init__(self) -> None:
        if self.colour not in COLOURS:
            raise ConfigError(f"unknown colour {self.colour!r}; known: {', '.join(COLOURS)}")
        if self.shape not in SHAPES:
            raise ConfigError(f"unknown shape {self.shape!r}; known: {', '.join(SHAPES)}")
        if (self.context is None) == (self.motion is None):
            raise ConfigError(f"{self.colour} {self.shape}: give exactly one of context and motion")
        if self.context is not None and self.context not in CONTEXTS:
            raise ConfigError(f"unknown context {self.context!r}; known: {', '.join(CONTEXTS)}")
        if self.motion is not None:
            if self.motion not in MOTIONS:
                raise ConfigError(f"unknown motion {self.motion!r}; known: {', '.join(MOTIONS)}")
            if self.shape not in MOTION_AXES[self.axis].shapes:
                raise ConfigError(f"{self.motion!r} is invisible on a {self.shape}")

    @property
    def group(self) -> Group:
        return "static" if self.context is not None else "temporal"

    @property
    def phrase(self) -> str:
        """The context or motion phrase: "on grass", "moving left"."""
        return CONTEXTS[self.context] if self.context is not None else self.motion

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape} {self.phrase}"

    @property
    def axis(self) -> str | None:
        return MOTIONS[self.motion][0] if self.motion is not None else None

    @property
    def reversed(self) -> bool:
        """True for the backward direction of an axis (its twin's scene with the motion run the other way)."""
        return self.motion is not None and MOTIONS[self.motion][1]

    def twin(self) -> Concepts | None:
        """The same object moving in the opposite direction; ``None`` for static concepts."""
        if self.motion is None:
            return None
        axis = MOTION_AXES[self.axis]
        opposite = axis.forward if self.reversed else axis.backward
        return Concepts(self.colour, self.shape, motion=opposite)


@dataclass(frozen=True)
class ActionClass:
    """One class of a world: its name, concepts, group, half and (temporal only) twin's name."""

    name: str
    concepts: Concepts
    half: Half
    twin: str | None

    @property
    def group(self) -> Group:
        return self.concepts.group

    def to_dict(self) -> dict:
        concepts = self.concepts
        return {
            "name": self.name,
            "group": self.group,
            "half": self.half,
            "twin": self.twin,
            "colour": concepts.colour,
            "shape": concepts.shape,
            "context": concepts.context,
            "motion": concepts.motion,
        }


# --------------------------------------------------------------------------- styles


RGB = tuple[float, float, float]


@dataclass(frozen=True)
class Style:
    """How a world is drawn.  Colours are RGB in [0, 1].

    Args:
        name: the style's name.
        palette: object colour for each colour word (jittered per clip).
        grounds: ground colour for each context.
        backgrounds: nuisance background kinds drawn from (see ``render``).
        fill: ``"flat"`` (uniform) or ``"striped"`` (stripes fixed to the object).
        outline: width of a dark outline, as a fraction of the object's radius (0: none).
        ground_texture: strength of the grass/sand/snow texture (0: plain colours).
        noise: range of the per-pixel Gaussian noise's standard deviation.
        distractors: the most distractor objects in a scene.
    """

    name: str
    palette: dict[str, RGB]
    grounds: dict[str, RGB]
    backgrounds: tuple[str, ...]
    fill: Literal["flat", "striped"]
    outline: float
    ground_texture: float
    noise: tuple[float, float]
    distractors: int


STYLES: dict[str, Style] = {
    "flat": Style(
        name="flat",
        palette={
            "red": (0.86, 0.12, 0.12),
            "green": (0.12, 0.68, 0.22),
            "blue": (0.14, 0.30, 0.92),
            "yellow": (0.96, 0.86, 0.12),
            "purple": (0.56, 0.16, 0.76),
            "orange": (1.00, 0.55, 0.05),
        },
        grounds={"grass": (0.22, 0.56, 0.16), "sand": (0.86, 0.76, 0.52), "water": (0.16, 0.36, 0.72),
                 "snow": (0.94, 0.95, 0.98)},
        backgrounds=("solid", "gradient", "floor"),
        fill="flat",
        outline=0.0,
        ground_texture=0.0,
        noise=(0.0, 0.02),
        distractors=2,
    ),
    # Different shades, textures and outlines: a domain shift for the cross-dataset protocol.
    "textured": Style(
        name="textured",
        palette={
            "red": (0.78, 0.16, 0.22),
            "green": (0.28, 0.62, 0.14),
            "blue": (0.10, 0.46, 0.82),
            "yellow": (0.90, 0.90, 0.30),
            "purple": (0.62, 0.30, 0.70),
            "orange": (0.92, 0.46, 0.16),
        },
        grounds={"grass": (0.30, 0.50, 0.12), "sand": (0.80, 0.70, 0.46), "water": (0.12, 0.42, 0.62),
                 "snow": (0.90, 0.92, 0.96)},
        backgrounds=("noise", "stripes", "checker", "floor"),
        fill="striped",
        outline=0.18,
        ground_texture=0.25,
        noise=(0.01, 0.04),
        distractors=3,
    ),
}


def get_style(style: str | Style) -> Style:
    """A :class:`Style` from its name (or itself)."""
    if isinstance(style, Style):
        return style
    if style not in STYLES:
        raise ConfigError(f"unknown SynthActions style {style!r}; known: {', '.join(STYLES)}")
    return STYLES[style]


# --------------------------------------------------------------------------- the class catalogue

_BOTH = ("flat", "textured")
_FLAT = ("flat",)
_TEXTURED = ("textured",)

# Twin pairs: (colour, shape, motion axis, half, worlds).  Each half has one pair
# per axis; within a half no two pairs share colour and shape.
_TWIN_PAIRS = (
    ("red", "ball", "horizontal", "base", _BOTH),
    ("blue", "square", "vertical", "base", _BOTH),
    ("yellow", "star", "scale", "base", _BOTH),
    ("green", "triangle", "rotation", "base", _BOTH),
    ("purple", "ball", "aperture", "base", _BOTH),
    ("red", "square", "opacity", "base", _FLAT),
    ("blue", "triangle", "opacity", "base", _TEXTURED),
    ("green", "star", "horizontal", "novel", _BOTH),
    ("red", "triangle", "vertical", "novel", _BOTH),
    ("blue", "ball", "scale", "novel", _FLAT),
    ("yellow", "ball", "scale", "novel", _TEXTURED),
    ("purple", "square", "rotation", "novel", _BOTH),
    ("orange", "star", "aperture", "novel", _FLAT),
    ("red", "star", "aperture", "novel", _TEXTURED),
    ("yellow", "triangle", "opacity", "novel", _BOTH),
)

# Static classes: (colour, shape, context, half, worlds).  Every colour, shape and
# context except NOVEL_ONLY_WORDS occurs in the base half; low-contrast pairs
# (green on grass, blue in water, yellow on sand) are left out so the object stays visible.
# Within a half, static classes differ in colour or ground, not in shape alone.
_STATIC = (
    ("red", "square", "grass", "base", _FLAT),
    ("blue", "ball", "sand", "base", _BOTH),
    ("yellow", "triangle", "water", "base", _BOTH),
    ("purple", "star", "water", "base", _BOTH),
    ("purple", "ball", "grass", "base", _BOTH),
    ("green", "square", "sand", "base", _BOTH),
    ("red", "star", "water", "base", _BOTH),
    ("blue", "ball", "grass", "base", _BOTH),
    ("yellow", "ball", "grass", "base", _FLAT),
    ("purple", "square", "sand", "base", _FLAT),
    ("red", "triangle", "sand", "base", _BOTH),
    ("green", "square", "water", "base", _BOTH),
    ("red", "ball", "grass", "base", _TEXTURED),
    ("yellow", "square", "grass", "base", _TEXTURED),
    ("purple", "triangle", "sand", "base", _TEXTURED),
    ("red", "ball", "sand", "novel", _FLAT),
    ("red", "triangle", "snow", "novel", _BOTH),
    ("blue", "square", "grass", "novel", _BOTH),
    ("blue", "star", "sand", "novel", _FLAT),
    ("yellow", "star", "snow", "novel", _BOTH),
    ("yellow", "square", "water", "novel", _BOTH),
    ("purple", "triangle", "grass", "novel", _BOTH),
    ("purple", "ball", "water", "novel", _BOTH),
    ("orange", "star", "sand", "novel", _BOTH),
    ("orange", "square", "snow", "novel", _BOTH),
    ("green", "ball", "water", "novel", _FLAT),
    ("green", "triangle", "grass", "novel", _BOTH),
    ("orange", "ball", "water", "novel", _TEXTURED),
    ("blue", "triangle", "snow", "novel", _TEXTURED),
    ("green", "star", "sand", "novel", _TEXTURED),
)


@dataclass(frozen=True)
class World:
    """The classes of one style's world, in their full-label order (ids of ``<name>_labels.csv``)."""

    style: str
    classes: tuple[ActionClass, ...]

    def __post_init__(self) -> None:
        _check_world(self)

    @property
    def names(self) -> list[str]:
        return [action.name for action in self.classes]

    @property
    def base_classes(self) -> list[ActionClass]:
        return [action for action in self.classes if action.half == "base"]

    @property
    def novel_classes(self) -> list[ActionClass]:
        return [action for action in self.classes if action.half == "novel"]

    def __getitem__(self, name: str) -> ActionClass:
        for action in self.classes:
            if action.name == name:
                return action
        raise KeyError(f"no class {name!r} in the {self.style} world")

    def group_of(self, name: str) -> Group:
        """``"static"`` or ``"temporal"``: the per-group accuracy key of a class name."""
        return self[name].group

    def twin_of(self, name: str) -> str | None:
        return self[name].twin

    def counts(self) -> dict[str, int]:
        """Class counts by half and group, e.g. ``{"base_static": 12, ...}``."""
        counts = {"classes": len(self.classes)}
        for half, group in itertools.product(("base", "novel"), ("static", "temporal")):
            counts[f"{half}_{group}"] = sum(a.half == half and a.group == group for a in self.classes)
        return counts


def build_world(style: str | Style = "flat") -> World:
    """The classes of ``style``'s world: twin pairs first (twins adjacent), then static classes."""
    style_name = get_style(style).name
    classes = []
    for colour, shape, axis_name, half, worlds in _TWIN_PAIRS:
        if style_name in worlds:
            axis = MOTION_AXES[axis_name]
            forward = Concepts(colour, shape, motion=axis.forward)
            backward = Concepts(colour, shape, motion=axis.backward)
            classes.append(ActionClass(forward.name, forward, half, backward.name))
            classes.append(ActionClass(backward.name, backward, half, forward.name))
    for colour, shape, context, half, worlds in _STATIC:
        if style_name in worlds:
            concepts = Concepts(colour, shape, context=context)
            classes.append(ActionClass(concepts.name, concepts, half, None))
    return World(style_name, tuple(classes))


def parse_class_name(name: str) -> Concepts:
    """The concepts of a name such as ``"red ball moving left"`` (any composition of the vocabulary)."""
    words = name.strip().split()
    if len(words) < 3:
        raise ConfigError(f"{name!r} is not '<colour> <shape> <context or motion>'")
    colour, shape, phrase = words[0], words[1], " ".join(words[2:])
    contexts_by_phrase = {phrase_: key for key, phrase_ in CONTEXTS.items()}
    if phrase in contexts_by_phrase:
        return Concepts(colour, shape, context=contexts_by_phrase[phrase])
    if phrase in MOTIONS:
        return Concepts(colour, shape, motion=phrase)
    raise ConfigError(f"{name!r}: unknown phrase {phrase!r}; known: {', '.join([*CONTEXTS.values(), *MOTIONS])}")


def random_concepts(rng: np.random.Generator) -> Concepts:
    """A uniformly drawn composition of the whole vocabulary, static or temporal with equal odds.

    This is how still-image pretraining covers every word and far more
    compositions than any world's classes, as web data does for CLIP.
    """
    colour = COLOURS[rng.integers(len(COLOURS))]
    if rng.random() < 0.5:
        shape = SHAPES[rng.integers(len(SHAPES))]
        return Concepts(colour, shape, context=list(CONTEXTS)[rng.integers(len(CONTEXTS))])
    motion = list(MOTIONS)[rng.integers(len(MOTIONS))]
    shapes = MOTION_AXES[MOTIONS[motion][0]].shapes
    return Concepts(colour, shapes[rng.integers(len(shapes))], motion=motion)


def vocabulary() -> set[str]:
    """Every word any class or caption subject can use."""
    phrases = [*CONTEXTS.values(), *MOTIONS]
    return {*COLOURS, *SHAPES, *(word for phrase in phrases for word in phrase.split())}


def _check_world(world: World) -> None:
    """The properties the benchmark promises (module docstring): an edited catalogue that breaks one fails here."""
    names = world.names
    if len(set(names)) != len(names):
        raise ConfigError(f"{world.style} world: duplicate class names")
    base_words = {word for action in world.base_classes for word in action.name.split()}
    novel_words = {word for action in world.novel_classes for word in action.name.split()}
    if base_words & NOVEL_ONLY_WORDS or not NOVEL_ONLY_WORDS <= novel_words:
        raise ConfigError(f"{world.style} world: {sorted(NOVEL_ONLY_WORDS)} must occur in novel names only")
    for action in world.classes:
        if action.twin is not None and world[action.twin].half != action.half:
            raise ConfigError(f"{world.style} world: twins {action.name!r} and {action.twin!r} in different halves")
        missing = set(action.name.split()) - base_words - NOVEL_ONLY_WORDS
        if missing:
            raise ConfigError(f"{world.style} world: {action.name!r} uses words {missing} that no base class has")
    temporal = sum(action.group == "temporal" for action in world.classes)
    if 3 * temporal < len(world.classes):
        raise ConfigError(f"{world.style} world: only {temporal} of {len(world.classes)} classes are temporal")
