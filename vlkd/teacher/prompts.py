"""Prompt templates for turning class names into text the CLIP text tower can embed.

A template is a format string with one ``{}`` slot for the class name. Zero-shot
classification embeds every template per class and averages the normalised
embeddings ("prompt ensembling", Radford et al. 2021, Sec. 3.1.4).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from vlkd.errors import ConfigError

#: The single template CLIP uses for plain image classification.
PHOTO_TEMPLATES: tuple[str, ...] = ("a photo of a {}.",)

#: Templates for human action videos; the video students train with one of these
#: sampled per step and evaluate with all of them averaged.
VIDEO_TEMPLATES: tuple[str, ...] = (
    "a video of a person {}.",
    "a video of a person doing {}.",
    "a clip of a person {}.",
    "a clip of someone {}.",
    "a video of {}.",
    "a photo of a person {}.",
    "a person is {}.",
    "a demonstration of {}.",
    "footage of {}.",
    "an example of {}.",
    "a person practising {}.",
    "someone {}.",
    "a blurry video of a person {}.",
    "a close-up video of {}.",
    "a cropped video of a person {}.",
    "a low resolution video of a person {}.",
)

#: The seven ImageNet templates of CLIP's prompt-engineering notebook, the ensemble DHO's
#: teacher uses for ImageNet.
IMAGENET_TEMPLATES: tuple[str, ...] = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)

#: Named template sets, so configs can say ``templates: video``.
TEMPLATE_SETS: dict[str, tuple[str, ...]] = {
    "photo": PHOTO_TEMPLATES,
    "video": VIDEO_TEMPLATES,
    "imagenet": IMAGENET_TEMPLATES,
    "none": ("{}",),
}


def resolve_templates(templates: str | Sequence[str] | None) -> tuple[str, ...]:
    """Turn a set name, a list of templates or ``None`` (the photo template) into a checked tuple."""
    if templates is None:
        return PHOTO_TEMPLATES
    if isinstance(templates, str):
        if templates in TEMPLATE_SETS:
            return TEMPLATE_SETS[templates]
        if "{}" in templates:
            return (templates,)
        raise ConfigError(
            f"unknown template set {templates!r}: use one of {sorted(TEMPLATE_SETS)} "
            "or a format string with one '{}' for the class name"
        )
    resolved = tuple(templates)
    if not resolved:
        raise ConfigError("templates is empty: give at least one template with a '{}' slot")
    for template in resolved:
        if template.count("{}") != 1:
            raise ConfigError(f"template {template!r} must contain exactly one '{{}}' for the class name")
    return resolved


def class_prompts(class_names: Sequence[str], template: str, descriptions: Mapping[str, str] | None = None) -> list[str]:
    """One sentence per class: ``template`` filled with the name, then the class's description if it has one."""
    descriptions = descriptions or {}
    return [f"{template.format(name)} {descriptions[name]}" if name in descriptions else template.format(name)
            for name in class_names]
