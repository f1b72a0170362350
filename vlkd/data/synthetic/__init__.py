"""SynthActions: an offline open-vocabulary action benchmark rendered procedurally and written as real videos.

No real video datasets or pretrained CLIP weights are available offline, so
this package builds a small world with the structure of the real problem:

* :mod:`~vlkd.data.synthetic.world`: the vocabulary (colours, shapes, contexts,
  motions), the classes built compositionally from it (static classes that one
  frame identifies, temporal classes that differ from a *twin* only in
  direction, as in Something-Something), the base/novel halves and the styles;
* :mod:`~vlkd.data.synthetic.render`: numpy rendering of clips and of captioned
  still frames, the "web image-text data" on which a tiny CLIP teacher is
  pretrained without ever seeing a clip (the rationale is in that module);
* :mod:`~vlkd.data.synthetic.actions`: :func:`generate_actions` writes H.264
  clips with the label, base-to-novel and zero-shot files of the real
  protocol, which :func:`vlkd.data.splits.load_base2novel` reads unchanged;
* :mod:`~vlkd.data.synthetic.clips`: unlabelled clips of random compositions,
  rendered on the fly, the "web video" for label-free distillation;
* :mod:`~vlkd.data.synthetic.tasks`: :func:`generate_tasks` writes SynthTasks,
  a sequence of still-image datasets in CoOp's layout (each with its own class
  names, style and templates, and two task orders) for continual learning (MTIL).

Typical use::

    from vlkd.data.synthetic import generate_actions
    data = generate_actions("synth/flat", style="flat")
    split = load_base2novel(data.name, seed=1, split_dir=data.root)  # videos under data.root
"""

from vlkd.data.synthetic.actions import (
    MANIFEST_NAME,
    GeneratedActions,
    clip_rng,
    default_dataset_name,
    generate_actions,
    read_manifest,
    read_world_classes,
)
from vlkd.data.synthetic.render import render_clip, render_still
from vlkd.data.synthetic.tasks import (
    TASK_ORDERS,
    TASKS,
    GeneratedTasks,
    SynthTask,
    generate_tasks,
    read_tasks,
    render_task_image,
)
from vlkd.data.synthetic.world import (
    STYLES,
    ActionClass,
    Concepts,
    Style,
    World,
    build_world,
    parse_class_name,
    random_concepts,
    vocabulary,
)

__all__ = [
    "MANIFEST_NAME",
    "STYLES",
    "TASKS",
    "TASK_ORDERS",
    "ActionClass",
    "Concepts",
    "GeneratedActions",
    "GeneratedTasks",
    "clip_rng",
    "Style",
    "SynthTask",
    "World",
    "build_world",
    "default_dataset_name",
    "generate_actions",
    "generate_tasks",
    "parse_class_name",
    "random_concepts",
    "read_manifest",
    "read_tasks",
    "read_world_classes",
    "render_clip",
    "render_still",
    "render_task_image",
    "vocabulary",
]
