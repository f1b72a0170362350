"""One LightningModule per method; every one is named in configs by ``class_path`` (short names work)."""

from vlkd.methods.base import ClassificationMethod, trainable_parameters
from vlkd.methods.callbacks import EpochWeightAveraging
from vlkd.methods.continual import ContinualCLIP, SequentialFineTune, ZeroShotContinual
from vlkd.methods.dho import DHO
from vlkd.methods.ezad import EZAD
from vlkd.methods.finetune import FineTuneCLIP
from vlkd.methods.froster import FROSTER
from vlkd.methods.lwf import LwF
from vlkd.methods.mulki import MulKI
from vlkd.methods.residualvit import ResidualViTDistillation
from vlkd.methods.wiseft import WiSEFT
from vlkd.methods.zeroshot import ZeroShotCLIP
from vlkd.methods.zscl import ZSCL

__all__ = [
    "DHO",
    "EZAD",
    "FROSTER",
    "ContinualCLIP",
    "EpochWeightAveraging",
    "FineTuneCLIP",
    "LwF",
    "MulKI",
    "ResidualViTDistillation",
    "ClassificationMethod",
    "SequentialFineTune",
    "WiSEFT",
    "ZSCL",
    "ZeroShotCLIP",
    "ZeroShotContinual",
    "trainable_parameters",
]
