"""MulKI: its prototypes, the per-sample weights of its two teachers, its relation distillation, its task-end
arithmetic, and a short run of the continual loop."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
import torch.nn.functional as F
from lightning.pytorch.loggers import CSVLogger

from tests.conftest import TINY, continual_cli_config, results_without_cost
from vlkd.cli import main
from vlkd.data.continual import ContinualDataModule
from vlkd.data.synthetic.tasks import generate_tasks
from vlkd.methods import MulKI
from vlkd.methods.continual import distillation
from vlkd.methods.mulki import row_distillation, teacher_weights, training_images_loader
from vlkd.teacher import TeacherSpec

TINY_TEACHER = TeacherSpec(TINY, None)
ORDER = ["SynthPlaces", "SynthColours"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("tasks")
    generate_tasks(root, size=32, train_per_class=3, val_per_class=1, test_per_class=2)
    return root


def data(world: Path, **kwargs) -> ContinualDataModule:
    settings = dict(source="synth", root=str(world), order=ORDER, iterations_per_task=3, batch_size=4,
                    image_size=32, num_workers=0, seed=0)
    module = ContinualDataModule(**{**settings, **kwargs})
    module.setup("fit")
    return module


def method_on(module: ContinualDataModule, **kwargs) -> MulKI:
    method = MulKI(TINY_TEACHER, **kwargs)
    method.sequence = [{"name": t.name, "class_names": list(t.class_names), "templates": list(t.templates)}
                       for t in module.tasks]
    method.iterations_per_task = module.iterations_per_task
    return method


def test_image_prototypes_are_the_normalised_class_means_of_the_teachers_features(world):
    module = data(world)
    method = method_on(module)
    loader = training_images_loader(module, 1)
    dataset = loader.dataset
    assert len(dataset) == len(module.tasks[1].train_samples) and not dataset.train
    state = method.prepare_task(1, loader)
    images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    labels = torch.tensor([dataset[i]["label"] for i in range(len(dataset))])
    features = method.teacher.encode_images(images)
    num_classes = len(module.tasks[1].class_names)
    expected = torch.stack([F.normalize(features[labels == c].mean(0), dim=0) for c in range(num_classes)])
    assert state["image"].shape == expected.shape
    assert torch.allclose(state["image"], expected, atol=1e-5)
    text = method.teacher.encode_text(module.tasks[1].class_names, list(module.tasks[1].templates))
    assert torch.allclose(state["text"], text, atol=1e-6)


def test_a_class_without_images_takes_its_text_prototype():
    method = MulKI(TINY_TEACHER)
    images = torch.rand(4, 3, 32, 32)
    loader = [{"image": images, "label": torch.tensor([0, 0, 2, -1])}]
    fallback = F.normalize(torch.randn(3, method.teacher.embed_dim), dim=-1)
    prototypes = method.image_prototypes(loader, 3, fallback=fallback)
    features = method.teacher.encode_images(images[:3])
    assert torch.allclose(prototypes[0], F.normalize(features[:2].mean(0), dim=0), atol=1e-5)
    assert torch.allclose(prototypes[1], fallback[1]) and torch.allclose(prototypes[2], features[2], atol=1e-5)


def test_teacher_weights_sum_to_one_and_favour_the_teacher_surer_of_the_true_class():
    labels = torch.tensor([0, 1, 2])
    confident = torch.tensor([[5.0, 0, 0], [0, 5.0, 0], [0, 0, 0.0]])  # sure of 0 and 1, unsure of 2
    wrong = torch.tensor([[0, 5.0, 0], [0, 0, 0.0], [0, 0, 5.0]])      # wrong on 0, unsure of 1, sure of 2
    weights = teacher_weights([confident, wrong], labels, 0.5)
    assert weights.shape == (3, 2) and torch.allclose(weights.sum(dim=1), torch.ones(3))
    assert weights[0, 0] > weights[0, 1] and weights[1, 0] > weights[1, 1] and weights[2, 1] > weights[2, 0]
    # The formula: softmax over the teachers of true-class probability / temperature.
    p = torch.stack([confident.softmax(1)[range(3), labels], wrong.softmax(1)[range(3), labels]], dim=1)
    assert torch.allclose(weights, (p / 0.5).softmax(dim=1))
    # Equal teachers share equally; a lower temperature sharpens the choice.
    assert torch.allclose(teacher_weights([confident, confident], labels, 0.5), torch.full((3, 2), 0.5))
    assert teacher_weights([confident, wrong], labels, 0.1)[0, 0] > weights[0, 0]


def test_row_distillation_averages_to_the_loops_distillation():
    torch.manual_seed(0)
    student, teacher = torch.randn(5, 4), torch.randn(5, 4)
    rows = row_distillation(student, teacher, 2.0)
    assert rows.shape == (5,) and (rows > 0).all()
    assert rows.mean().item() == pytest.approx(distillation(student, teacher, 2.0).item(), rel=1e-6)


def _batch_terms(method: MulKI, task: int, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
    text = method.student.encode_text(method.training_tokens(task), normalize=True)
    image = method.image_embeddings(method.student, images)
    return method.mulki_losses(images, labels, task, image, text)


@pytest.mark.parametrize("task", [0, 1])
def test_distillation_is_zero_while_the_student_equals_both_teachers(world, task):
    module = data(world)
    method = method_on(module)
    method.on_task_start(task)  # P <- the student, which is still the original CLIP (Z)
    method.prepare_task(task, training_images_loader(module, task))
    torch.manual_seed(0)
    images = torch.rand(4, 3, 32, 32)
    labels = torch.tensor([0, 1, 2, 0])
    terms = _batch_terms(method, task, images, labels)
    assert terms["mulki_relation"].item() == pytest.approx(0.0, abs=1e-4)
    assert terms["mulki_logit"].item() == pytest.approx(0.0, abs=1e-4)
    assert terms["mulki_proto_image"].item() > 0 and terms["mulki_proto_text"].item() > 0
    with torch.no_grad():
        for param in method.student.model.visual.parameters():
            param.add_(0.05 * torch.randn_like(param))
    terms = _batch_terms(method, task, images, labels)
    assert terms["mulki_relation"].item() > 1e-4 and terms["mulki_logit"].item() > 1e-4
    loss = sum(terms.values())
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in method.student.model.visual.parameters())


def _perturb(module: torch.nn.Module, seed: int) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in module.parameters():
            param.add_(torch.randn(param.shape, generator=generator))
    return {name: value.clone() for name, value in module.named_parameters()}


def test_a_task_ends_at_alpha_of_the_way_from_the_previous_stage_to_the_tasks_ensemble():
    method = MulKI(TINY_TEACHER, ensemble_every=5, alpha=0.3)
    method.iterations_per_task = 2
    method.on_task_start(0)
    start = {name: value.clone() for name, value in method.student.named_parameters()}
    first = _perturb(method.student, 1)
    method.after_step(0, 0)  # joins: (start + first) / 2
    second = _perturb(method.student, 2)
    method.after_step(0, 1)  # the task's last step joins: (start + first + second) / 3
    method.on_task_end(0)
    for name, value in method.student.named_parameters():
        ensemble = (start[name] + first[name] + second[name]) / 3
        assert torch.allclose(value, 0.3 * ensemble + 0.7 * start[name], atol=1e-5), name
    # Without the ensemble: WiSE-FT's arithmetic between the previous stage and the tuned weights.
    method = MulKI(TINY_TEACHER, ensemble_every=0, alpha=0.5)
    method.on_task_start(0)
    start = {name: value.clone() for name, value in method.student.named_parameters()}
    tuned = _perturb(method.student, 3)
    method.on_task_end(0)
    for name, value in method.student.named_parameters():
        assert torch.allclose(value, 0.5 * tuned[name] + 0.5 * start[name], atol=1e-5), name


def test_a_short_run_writes_the_matrix_and_the_metrics(world, tmp_path):
    module = data(world)
    method = MulKI(TINY_TEACHER, lr=1e-3, warmup_steps=1, ensemble_every=2)
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=CSVLogger(tmp_path), enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, log_every_n_steps=1)
    trainer.fit(method, datamodule=module)
    assert trainer.global_step == 6
    results = json.loads((Path(trainer.log_dir) / "results.json").read_text())
    assert results["method"] == "MulKI" and results["datasets"] == ORDER
    assert len(results["matrix"]) == 2 and all(len(row) == 2 for row in results["matrix"])
    assert {"transfer", "average", "last"} <= set(results)
    assert results["settings"]["alpha"] == 0.5 and results["settings"]["ensemble_every"] == 2
    assert [entry["steps"] for entry in results["cost"]["tasks"]] == [3, 3]
    metrics = (Path(trainer.log_dir) / "metrics.csv").read_text().splitlines()[0]
    assert all(name in metrics for name in ("train/mulki_relation", "train/mulki_logit", "train/mulki_proto_image"))


def test_reference_data_is_refused(world, tmp_path):
    from vlkd.data.continual import ReferenceData

    module = data(world, reference=ReferenceData(images=str(world / "SynthColours" / "images"), num_sentences=4))
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=False, enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False)
    with pytest.raises(Exception, match="uses no reference data"):
        trainer.fit(MulKI(TINY_TEACHER), datamodule=module)


def _cli_config(tmp_path: Path, world: Path, name: str) -> Path:
    return continual_cli_config(tmp_path, name, "MulKI", {"ensemble_every": 2}, {"root": str(world), "order": ORDER})


def test_a_run_killed_in_the_second_task_and_resumed_gives_the_uninterrupted_results(world, tmp_path):
    """Killed after 6 steps (in task 2 of 2: P, the ensemble and its count come from the checkpoint, the
    prototypes are recomputed), then resumed from last.ckpt: the results of the uninterrupted run."""
    assert main(["fit", "--config", str(_cli_config(tmp_path, world, "whole"))]) == 0
    expected = results_without_cost(tmp_path / "whole" / "results.json")
    config = _cli_config(tmp_path, world, "killed")
    assert main(["fit", "--config", str(config), "--trainer.max_steps", "6"]) == 0
    assert not (tmp_path / "killed" / "results.json").exists()
    last = tmp_path / "killed" / "checkpoints" / "last.ckpt"
    assert main(["fit", "--config", str(config), "--ckpt_path", str(last)]) == 0
    assert results_without_cost(tmp_path / "killed" / "results.json") == expected
