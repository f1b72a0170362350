"""The continual loop (MTIL protocol): steps and batches, the accuracy matrix, resuming, and each method's own part."""

from __future__ import annotations

import json
from pathlib import Path

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger

from tests.conftest import TINY, continual_cli_config, results_without_cost
from vlkd.cli import main
from vlkd.data.continual import (
    ContinualBatchSampler,
    ContinualDataModule,
    ReferenceData,
    collate_continual,
    reference_image_samples,
    step_to_task,
    synth_reference_sentences,
)
from vlkd.data.synthetic.tasks import generate_tasks
from vlkd.methods import LwF, SequentialFineTune, WiSEFT, ZeroShotContinual, ZSCL
from vlkd.methods.continual import average_parameters, distillation, interpolate_parameters, parameter_distance
from vlkd.teacher import TeacherSpec

TINY_TEACHER = TeacherSpec(TINY, None)
ORDER = ["SynthPlaces", "SynthColours", "SynthDarkGrounds"]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """All six SynthTasks at 32 px: 4 training and 2 test images per class."""
    root = tmp_path_factory.mktemp("tasks")
    generate_tasks(root, size=32, train_per_class=4, val_per_class=1, test_per_class=2)
    return root


def data(world: Path, **kwargs) -> ContinualDataModule:
    settings = dict(source="synth", root=str(world), order=ORDER, iterations_per_task=3, batch_size=4,
                    image_size=32, num_workers=0, seed=0)
    return ContinualDataModule(**{**settings, **kwargs})


def reference(world: Path, **kwargs) -> ReferenceData:
    """Reference images: a folder of class folders (here one task's images); generated sentences."""
    return ReferenceData(images=str(world / "SynthColours" / "images"), num_sentences=12, batch_size=3, **kwargs)


def fit(method, datamodule, root: Path, **trainer) -> pl.Trainer:
    trainer = pl.Trainer(accelerator="cpu", devices=1, logger=CSVLogger(root), enable_progress_bar=False,
                         enable_model_summary=False, enable_checkpointing=False, **trainer)
    trainer.fit(method, datamodule=datamodule)
    return trainer


# --------------------------------------------------------------------------- steps and batches


def test_global_steps_map_to_tasks_in_blocks_of_iterations_per_task():
    assert [step_to_task(step, 3) for step in range(7)] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2), (2, 0)]
    with pytest.raises(ValueError):
        step_to_task(-1, 3)


def test_an_iterator_runs_from_its_start_step_to_the_end_of_that_task():
    sampler = ContinualBatchSampler([10, 7, 5], iterations_per_task=4, batch_size=3, seed=0, start=0)
    steps = [[key[4] for key in batch] for batch in sampler]
    assert steps == [[step] * 3 for step in range(4)]  # task 0 only, one step per batch
    sampler.start = 6
    batches = list(sampler)
    assert [batch[0][4] for batch in batches] == [6, 7] and {key[1] for b in batches for key in b} == {1}
    sampler.start = 12  # past the sequence: nothing
    assert list(sampler) == []


def test_batches_are_a_function_of_seed_task_and_step_alone(world):
    module = data(world, flip=True)
    module.setup("fit")
    # Keys: the same whether an iterator started at the task's start or in its middle, on any sampler.
    whole = {batch[0][4]: batch for batch in module.batch_sampler(start=3)}
    resumed = {batch[0][4]: batch for batch in module.batch_sampler(start=4)}
    assert set(whole) == {3, 4, 5} and set(resumed) == {4, 5}
    assert all(resumed[step] == whole[step] for step in resumed)
    assert module.batch_sampler(start=0).batch(4) == whole[4]
    other = data(world, seed=1, flip=True)
    other.setup("fit")
    assert other.batch_sampler(start=0).batch(4) != whole[4]  # the seed matters
    # Pixels: the same through a loader started at step 3 and one started at step 4, with worker processes.
    first = {batch["step"]: batch for batch in module.train_dataloader(start=3)}
    module.num_workers = 2
    second = {batch["step"]: batch for batch in module.train_dataloader(start=4)}
    for step in (4, 5):
        assert first[step]["task"] == second[step]["task"] == 1
        assert torch.equal(first[step]["image"], second[step]["image"])
        assert torch.equal(first[step]["label"], second[step]["label"])
    # The augmentation draws differ between steps: the same image is not cut the same way twice.
    dataset = module.train_dataloader(start=0).dataset
    key = whole[3][0]
    again = (key[0], key[1], key[2], key[3] + 1, key[4])
    assert not torch.equal(dataset[key]["image"], dataset[again]["image"])


def test_flips_only_for_flip_safe_tasks_and_the_crop_scale(world):
    module = data(world, flip=True, crop_scale=(0.9, 1.0))
    module.setup("fit")
    flips = dict(zip(module.task_names, (dataset.flip for dataset in module.train_datasets)))
    assert flips == {"SynthPlaces": False, "SynthColours": True, "SynthDarkGrounds": True}
    assert all(dataset.crop_scale == (0.9, 1.0) for dataset in module.train_datasets)
    assert not any(dataset.train for dataset in module.test_datasets)


def test_reference_images_and_sentences_come_with_each_step(world):
    module = data(world, reference=reference(world, num_images=5))
    module.setup("fit")
    assert len(module.reference_dataset) == 5 and not module.reference_dataset.train
    assert len(module.reference_sentences) == 12 and len(set(module.reference_sentences)) > 6
    batch = next(iter(module.train_dataloader(start=0)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["reference"]["image"].shape == (3, 3, 32, 32)
    # ZSCL's ImageNetSUB draw: the first `num` positions of randperm(n) with seed 42, over sorted files.
    everything = reference_image_samples(world / "SynthColours" / "images")
    order = torch.randperm(len(everything), generator=torch.Generator().manual_seed(42)).tolist()
    assert reference_image_samples(world / "SynthColours" / "images", 5) == [everything[i] for i in order[:5]]
    assert synth_reference_sentences(12, 0) == module.reference_sentences != synth_reference_sentences(12, 1)


def test_a_batch_mixing_two_steps_is_refused():
    item = {"image": torch.zeros(3, 4, 4), "label": 0, "index": 0, "skipped": [], "kind": "train", "task": 0}
    with pytest.raises(ValueError, match="one task and one step"):
        collate_continual([{**item, "step": 0}, {**item, "step": 1}])


# --------------------------------------------------------------------------- the loop and its results


class OptimiserProbe(pl.Callback):
    """Records, before every step, the step, the learning rate and how many parameters have Adam state."""

    def __init__(self):
        self.seen: list[tuple[int, float, int]] = []

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        optimizer = trainer.optimizers[0]
        self.seen.append((trainer.global_step, optimizer.param_groups[0]["lr"], len(optimizer.state)))


def test_the_loop_writes_a_matrix_of_every_stage_and_resets_the_optimiser_per_task(world, tmp_path):
    module = data(world)
    method = SequentialFineTune(TINY_TEACHER, lr=1e-3, task_lr={"SynthColours": 4e-3}, warmup_steps=2)
    probe = OptimiserProbe()
    trainer = fit(method, module, tmp_path, callbacks=[probe])
    assert trainer.global_step == 9
    results = json.loads((Path(trainer.log_dir) / "results.json").read_text())
    assert results["datasets"] == ORDER and results["method"] == "SequentialFineTune"
    assert len(results["matrix"]) == 3 and all(len(row) == 3 for row in results["matrix"])
    assert len(results["zero_shot"]) == 3
    assert {"transfer", "average", "last"} <= set(results)
    assert (Path(trainer.log_dir) / "results.md").is_file()
    assert (Path(trainer.log_dir) / "accuracy_matrix.png").read_bytes()[:4] == b"\x89PNG"
    assert [entry["steps"] for entry in results["cost"]["tasks"]] == [3, 3, 3]
    assert all(entry["steps_per_second"] > 0 for entry in results["cost"]["tasks"])
    # The test loop (`vlkd test --ckpt_path ...`) scores the trained model on every task: the matrix's last row.
    tester = pl.Trainer(accelerator="cpu", logger=CSVLogger(tmp_path / "test"), enable_progress_bar=False,
                        enable_model_summary=False)
    tester.test(method, datamodule=module)
    tested = json.loads((Path(tester.log_dir) / "results.json").read_text())["metrics"]
    assert [tested[f"{name}_top1"] for name in ORDER] == pytest.approx(results["matrix"][-1])
    # Per task: a fresh optimiser state, warm-up over 2 steps to the task's lr, then a cosine.
    steps, lrs, states = zip(*probe.seen)
    assert steps == tuple(range(9))
    assert [states[s] for s in (0, 3, 6)] == [0, 0, 0] and all(states[s] > 0 for s in (1, 2, 4, 5, 7, 8))
    # 3 steps, 2 of warm-up: (s + 1) / 2 of the peak, then the cosine's first value (its peak).
    peak = {0: 1e-3, 1: 4e-3, 2: 1e-3}
    expected = [peak[step // 3] * (0.5, 1.0, 1.0)[step % 3] for step in steps]
    assert list(lrs) == pytest.approx(expected)


def test_the_learning_rate_warms_up_then_decays_by_a_cosine_to_zero_within_each_task(world):
    module = data(world, iterations_per_task=10)
    module.setup("fit")
    method = SequentialFineTune(TINY_TEACHER, lr=1e-5, task_lr={"SynthColours": 5e-5}, warmup_steps=4)
    method.sequence = [{"name": t.name, "class_names": t.class_names, "templates": list(t.templates)}
                       for t in module.tasks]
    method.iterations_per_task = 10
    factors = [method.lr_factor(step) for step in range(30)]
    assert factors[:4] == pytest.approx([0.25, 0.5, 0.75, 1.0])  # ZSCL's lr (s + 1) / W
    cosine = [0.5 * (1 + torch.cos(torch.tensor(torch.pi * k / 6)).item()) for k in range(6)]
    assert factors[4:10] == pytest.approx(cosine)
    assert factors[10:14] == pytest.approx([5 * f for f in (0.25, 0.5, 0.75, 1.0)])  # SynthColours: 5e-5
    assert factors[20:30] == pytest.approx(factors[:10]) and method.lr_factor(30) == 0.0


def test_the_zero_shot_reference_is_every_row_and_the_frozen_teachers_accuracy(world, tmp_path):
    module = data(world)
    shipped = TeacherSpec("vlkd-synth-vit", "synthactions")
    trainer = fit(ZeroShotContinual(shipped), module, tmp_path)
    assert trainer.global_step == 0
    results = json.loads((Path(trainer.log_dir) / "results.json").read_text())
    assert all(row == results["zero_shot"] for row in results["matrix"])
    teacher = shipped.build()
    expected = []
    for task, dataset in zip(module.tasks, module.test_datasets):
        images = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
        labels = torch.tensor([dataset[i]["label"] for i in range(len(dataset))])
        logits = teacher.zero_shot_logits(images, task.class_names, list(task.templates))
        expected.append(100.0 * (logits.argmax(1) == labels).float().mean().item())
    assert results["zero_shot"] == pytest.approx(expected)


def _cli_config(tmp_path: Path, world: Path, name: str, **trainer) -> Path:
    reference = {"images": str(world / "SynthColours" / "images"), "num_sentences": 12, "batch_size": 3}
    return continual_cli_config(tmp_path, name, "ZSCL", {"average_every": 2},
                                {"root": str(world), "order": ORDER, "reference": reference}, **trainer)


def test_a_run_killed_mid_task_and_resumed_gives_the_uninterrupted_results(world, tmp_path):
    """ZSCL keeps the most state (the weight ensemble, the anchor, reference batches). Killed after 7 steps (in
    task 2 of 3; the checkpoint was taken before the weight-ensemble merge of its last step) and after 4 (task 1's
    last step, before its merge, its end and its row), then resumed from last.ckpt, each run ends with the
    results of the uninterrupted run."""
    assert main(["fit", "--config", str(_cli_config(tmp_path, world, "whole"))]) == 0
    expected = results_without_cost(tmp_path / "whole" / "results.json")
    assert len(expected["matrix"]) == 3 and expected["zero_shot"] is not None
    for kill in (7, 4):
        config = _cli_config(tmp_path, world, f"killed_{kill}")
        assert main(["fit", "--config", str(config), "--trainer.max_steps", str(kill)]) == 0
        assert not (tmp_path / f"killed_{kill}" / "results.json").exists()
        last = tmp_path / f"killed_{kill}" / "checkpoints" / "last.ckpt"
        checkpoint = torch.load(last, weights_only=False)
        assert checkpoint["global_step"] == kill and checkpoint["continual"]["steps_processed"] == kill - 1
        assert main(["fit", "--config", str(config), "--ckpt_path", str(last)]) == 0
        assert results_without_cost(tmp_path / f"killed_{kill}" / "results.json") == expected


def test_fine_tuning_lifts_a_weak_task_above_zero_shot(tmp_path_factory, tmp_path):
    """The shipped teacher reads SynthDarkGrounds at about 43 % zero-shot; a short fine-tuning on it gains."""
    root = tmp_path_factory.mktemp("tasks64")
    generate_tasks(root, size=64, train_per_class=12, val_per_class=1, test_per_class=10)
    module = ContinualDataModule(source="synth", root=str(root), order=["SynthDarkGrounds", "SynthColours"],
                                 iterations_per_task=25, batch_size=16, image_size=64, num_workers=0, seed=0)
    method = SequentialFineTune(TeacherSpec("vlkd-synth-vit", "synthactions"), lr=3e-4, warmup_steps=3)
    fit(method, module, tmp_path, max_steps=25)  # the first task only
    zero_shot, after_first = method.rows[0], method.rows[1]
    assert after_first[0] >= zero_shot[0] + 15, (zero_shot, after_first)


# --------------------------------------------------------------------------- the methods' own parts


def test_weight_space_interpolation_and_averaging():
    torch.manual_seed(0)
    start, end, target = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    interpolate_parameters(target, start, end, 0.8)
    assert torch.allclose(target.weight, 0.8 * end.weight + 0.2 * start.weight)
    assert torch.allclose(target.bias, 0.8 * end.bias + 0.2 * start.bias)
    models = [torch.nn.Linear(3, 2) for _ in range(4)]
    average = torch.nn.Linear(3, 2)
    average.load_state_dict(models[0].state_dict())
    for count, model in enumerate(models[1:], start=1):
        average_parameters(average, model, count)
    assert torch.allclose(average.weight, torch.stack([m.weight for m in models]).mean(0), atol=1e-6)
    assert parameter_distance(end, end).item() == 0.0
    assert parameter_distance(start, end).item() == pytest.approx(
        ((start.weight - end.weight) ** 2).sum().item() + ((start.bias - end.bias) ** 2).sum().item(), rel=1e-5)


def test_wiseft_ends_a_task_at_alpha_of_the_way_from_its_start():
    method = WiSEFT(TINY_TEACHER, alpha=0.8)
    method.on_task_start(0)
    start = {name: value.clone() for name, value in method.student.named_parameters()}
    with torch.no_grad():
        for param in method.student.parameters():
            param.add_(torch.randn_like(param))
    tuned = {name: value.clone() for name, value in method.student.named_parameters()}
    method.on_task_end(0)
    for name, value in method.student.named_parameters():
        assert torch.allclose(value, 0.8 * tuned[name] + 0.2 * start[name], atol=1e-6), name


def test_distillation_is_zero_for_equal_logits_and_has_zscls_gradient():
    torch.manual_seed(0)
    teacher, student = torch.randn(5, 7), torch.randn(5, 7, requires_grad=True)
    assert distillation(teacher.clone(), teacher, 2.0).item() == pytest.approx(0.0, abs=1e-6)
    loss = distillation(student, teacher, 2.0)
    assert loss.item() > 0
    (ours,) = torch.autograd.grad(loss, student)
    # ZSCL's helpers.distillation: F.cross_entropy(s / T, softmax(t / T)) * T ** 2
    soft_ce = torch.nn.functional.cross_entropy(student / 2.0, torch.softmax(teacher / 2.0, dim=1)) * 4.0
    (theirs,) = torch.autograd.grad(soft_ce, student)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_zscls_distillation_is_zero_while_the_student_equals_the_teacher(world):
    method = ZSCL(TINY_TEACHER)
    method._reference_text = method.teacher.encode_prompts(synth_reference_sentences(12, 0))
    images = torch.rand(3, 3, 32, 32)
    losses = method.zscl_losses(images)
    assert losses["zscl_image"].item() == pytest.approx(0.0, abs=1e-5)
    assert losses["zscl_text"].item() == pytest.approx(0.0, abs=1e-5)
    with torch.no_grad():
        for param in method.student.model.visual.parameters():
            param.add_(0.05 * torch.randn_like(param))
    losses = method.zscl_losses(images)
    assert losses["zscl_image"].item() > 1e-4 and losses["zscl_text"].item() > 1e-4


def test_lwf_distils_nothing_at_a_task_start_and_pulls_back_after_a_change(world):
    module = data(world)
    module.setup("fit")
    method = LwF(TINY_TEACHER)
    method.sequence = [{"name": t.name, "class_names": t.class_names, "templates": list(t.templates)}
                       for t in module.tasks]
    method.on_task_start(0)
    batch = {"image": torch.rand(4, 3, 32, 32)}
    text = method.student.encode_text(method.training_tokens(0), normalize=True)
    image = method.image_embeddings(method.student, batch["image"])
    assert all(v.item() == pytest.approx(0.0, abs=1e-5) for v in method.extra_losses(batch, 0, image, text).values())
    with torch.no_grad():
        for param in method.student.model.visual.parameters():
            param.add_(0.05 * torch.randn_like(param))
    image = method.image_embeddings(method.student, batch["image"])
    assert all(v.item() > 1e-4 for v in method.extra_losses(batch, 0, image, text).values())


def test_methods_refuse_reference_data_they_do_not_use_and_zscl_needs_it(world, tmp_path):
    with pytest.raises(Exception, match="uses no reference data"):
        fit(SequentialFineTune(TINY_TEACHER), data(world, reference=reference(world)), tmp_path)
    with pytest.raises(Exception, match="distils on reference data"):
        fit(ZSCL(TINY_TEACHER), data(world), tmp_path)
