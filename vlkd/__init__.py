"""vlkd: vision-language knowledge distillation.

A frozen CLIP teacher (open_clip or Hugging Face weights) distilled into students
that recognise classes nobody labelled for them.
"""

__version__ = "0.1.0"

from vlkd.teacher import FrozenCLIP, create_teacher  # noqa: E402

__all__ = ["FrozenCLIP", "__version__", "create_teacher"]
