"""WiSE-FT for continual learning of CLIP, as ZSCL's MTIL baseline runs it.

Paper: "Robust fine-tuning of zero-shot models", Wortsman et al., CVPR 2022
(WiSE-FT: weight-space ensembles of the zero-shot and the fine-tuned model);
the continual form is ZSCL's baseline (Zheng et al., ICCV 2023;
``mtil/scripts/WiSE_finetune.sh``: ``--wise_merge --wise_ft_model n
--wise_ft_alpha 0.8``).

Method
------
Each task is fine-tuned with cross-entropy, as sequential fine-tuning does.
At the task's end the weights are interpolated between the model that
started the task, ``theta_start`` (the previous stage; the original CLIP
before the first task), and the fine-tuned one, ``theta_end``::

    theta <- alpha theta_end + (1 - alpha) theta_start,    alpha = 0.8

(ZSCL's ``param_q * alpha + param_k * (1 - alpha)``, every parameter), and
the next task starts from, and is evaluated with, the interpolated weights.
"""

from __future__ import annotations

from vlkd.errors import ConfigError
from vlkd.methods.continual import ContinualCLIP, copy_parameters, interpolate_parameters
from vlkd.teacher import TeacherSpec


class WiSEFT(ContinualCLIP):
    """Sequential fine-tuning with a weight-space interpolation at every task end (see the module docstring).

    Args:
        teacher, lr, task_lr, warmup_steps, label_smoothing, weight_decay, beta2: see
            :class:`~vlkd.methods.continual.ContinualCLIP`.
        alpha: the weight of the fine-tuned model (ZSCL's ``wise_ft_alpha``: 0.8).
    """

    def __init__(self, teacher: TeacherSpec | None = None, lr: float = 1e-5, task_lr: dict[str, float] | None = None,
                 warmup_steps: int = 100, label_smoothing: float = 0.2, weight_decay: float = 0.0,
                 beta2: float = 0.999, alpha: float = 0.8):
        super().__init__(teacher, lr, task_lr, warmup_steps, label_smoothing, weight_decay, beta2)
        if not 0 <= alpha <= 1:
            raise ConfigError(f"model.alpha must lie in [0, 1], got {alpha}")
        self.alpha = alpha
        self.start = self.keep_copy("start")

    def on_task_start(self, task: int) -> None:
        copy_parameters(self.start, self.student)

    def on_task_end(self, task: int) -> None:
        interpolate_parameters(self.student, self.start, self.student, self.alpha)

    def method_settings(self) -> dict:
        return {"alpha": self.alpha}
