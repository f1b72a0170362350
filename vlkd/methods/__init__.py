"""One LightningModule per method; every one is named in configs by ``class_path``."""

from vlkd.methods.base import VideoMethod, trainable_parameters
from vlkd.methods.zeroshot import ZeroShotCLIP

__all__ = ["VideoMethod", "ZeroShotCLIP", "trainable_parameters"]
