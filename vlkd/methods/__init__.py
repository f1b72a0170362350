"""One LightningModule per method; every one is named in configs by ``class_path`` (short names work)."""

from vlkd.methods.base import ClassificationMethod, trainable_parameters
from vlkd.methods.callbacks import EpochWeightAveraging
from vlkd.methods.dho import DHO
from vlkd.methods.ezad import EZAD
from vlkd.methods.finetune import FineTuneCLIP
from vlkd.methods.froster import FROSTER
from vlkd.methods.residualvit import ResidualViTDistillation
from vlkd.methods.zeroshot import ZeroShotCLIP

__all__ = [
    "DHO",
    "EZAD",
    "FROSTER",
    "EpochWeightAveraging",
    "FineTuneCLIP",
    "ResidualViTDistillation",
    "ClassificationMethod",
    "ZeroShotCLIP",
    "trainable_parameters",
]
