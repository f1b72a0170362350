"""DHO: its losses, the alpha / beta search, the gradient-conflict probe, the students, and runs of every variant."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlkd.cli import main
from vlkd.methods.dho import ALPHAS, BETAS, DHO, kd_loss, search_combination
from vlkd.models.dual_head import DualHeadClassifier

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs" / "dho_synth.yaml")
WORLD = {"pool_per_class": 16, "val_per_class": 2, "test_per_class": 2, "split_seeds": 1}


@pytest.fixture(scope="module")
def small_world(tmp_path_factory):
    from vlkd.data.synthetic.images import generate_images

    return generate_images(tmp_path_factory.mktemp("dho_world"), **WORLD)


def test_kd_loss_is_t_squared_kl_from_teacher_to_student():
    torch.manual_seed(0)
    student, teacher = torch.randn(4, 6), torch.randn(4, 6)
    t = 2.0
    p = (teacher / t).softmax(-1)
    expected = t**2 * (p * (p.log() - (student / t).log_softmax(-1))).sum(-1).mean()
    assert torch.allclose(kd_loss(student, teacher, t), expected, atol=1e-6)
    assert kd_loss(teacher, teacher, t).abs() < 1e-6


def test_search_picks_the_combination_that_is_right_most_often():
    # Images 0-5: the CE head is right; 6-9: only the KD head (confidently) is right.
    labels = torch.arange(10) % 3
    ce = torch.full((10, 3), 0.0)
    kd = torch.full((10, 3), 0.0)
    ce[torch.arange(6), labels[:6]] = 1.0  # mildly confident and right
    ce[torch.arange(6, 10), (labels[6:] + 1) % 3] = 1.0  # mildly confident and wrong
    kd[torch.arange(10), (labels + 1) % 3] = 1.0
    kd[torch.arange(6, 10), labels[6:]] = 8.0  # very confident where it is right
    alpha, beta, accuracy = search_combination(ce, kd, labels)
    assert accuracy == 100.0 and alpha in ALPHAS and beta in BETAS
    assert search_combination(ce, torch.zeros_like(kd), labels)[:2] == (0.05, 0.5)  # first best in grid order
    alone_ce = 100.0 * (ce.argmax(-1) == labels).float().mean().item()
    assert accuracy > alone_ce


def test_gradient_cosine_sees_agreeing_and_conflicting_losses():
    feature = torch.randn(5, 4, requires_grad=True)
    weights = torch.randn(4)
    agree = DHO.gradient_cosine((feature @ weights).sum(), 2 * (feature @ weights).sum(), feature)
    conflict = DHO.gradient_cosine((feature @ weights).sum(), -(feature @ weights).sum(), feature)
    assert agree.item() == pytest.approx(1.0, abs=1e-5) and conflict.item() == pytest.approx(-1.0, abs=1e-5)


def test_clip_tower_student_starts_as_its_clips_zero_shot_classifier(tiny_teacher):
    names = ["red ball on grass", "blue triangle on snow", "green ball on sand"]
    student = DualHeadClassifier.from_clip(tiny_teacher, names)
    images = torch.rand(2, 3, tiny_teacher.image_size, tiny_teacher.image_size)
    out = student(images)
    text = tiny_teacher.encode_text(names, "photo")
    expected = 100.0 * F.normalize(out.feature, dim=-1) @ text.T
    assert torch.allclose(out.kd, expected, atol=1e-4)
    assert torch.allclose(out.ce, out.feature @ text.T, atol=1e-4)  # raw feature, zero bias
    assert all(p.requires_grad for p in student.parameters())
    assert not any(p.requires_grad for p in tiny_teacher.parameters())  # the CLIP it came from stays frozen
    probabilities = student.predict_proba(images)
    assert torch.allclose(probabilities.sum(-1), torch.ones(2), atol=1e-5)


def test_timm_student_normalises_and_resizes_its_input():
    student = DualHeadClassifier.from_timm("test_resnet", num_classes=5, image_size=32)
    out = student(torch.rand(3, 3, 48, 48))
    assert out.ce.shape == out.kd.shape == (3, 5) and out.feature.shape == (3, student.ce_head.in_features)
    assert student.pixel_mean.flatten().tolist() == pytest.approx(list(student.backbone.pretrained_cfg["mean"]))


def _fit(world, out, *extra) -> dict:
    args = ["fit", "--config", CONFIG, "--data.init_args.root", str(world.root), "--data.init_args.labelled",
            "shot_2", "--data.init_args.num_workers", "0", "--data.init_args.batch_size", "8",
            "--trainer.max_epochs", "1", "--trainer.limit_train_batches", "4", "--trainer.enable_progress_bar",
            "false", "--trainer.default_root_dir", str(out), "--trainer.logger.class_path",
            "lightning.pytorch.loggers.CSVLogger", "--trainer.logger.init_args.save_dir", str(out),
            "--trainer.log_every_n_steps", "1", "--data.init_args.render", json.dumps(WORLD), *extra]
    assert main(args) == 0
    (results,) = out.rglob("results.json")
    return json.loads(results.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("variant", ["dho", "ce", "logit_kd", "feature_kd"])
def test_every_variant_trains_tunes_on_val_and_reports_test(small_world, tmp_path, variant):
    results = _fit(small_world, tmp_path, "--model.init_args.variant", variant,
                   "--model.init_args.conflict_every", "2")
    metrics = results["metrics"]
    assert 0 <= results["test_top1"] <= 100 and metrics["test_images"] == 84
    assert "val_top1" not in metrics  # the test table holds the test split only
    if variant == "dho":
        assert {"test_ce_head_top1", "test_kd_head_top1"} <= set(metrics)
        assert metrics["alpha"] in ALPHAS and metrics["beta"] in BETAS
    else:
        assert metrics["alpha"] == 1.0  # one head: its own softmax
    (log,) = tmp_path.rglob("metrics.csv")
    text = log.read_text()
    assert ("train/grad_cosine" in text) == (variant != "ce")
    assert ("train/kd_unlabelled" in text) == (variant != "ce")


@pytest.mark.slow
def test_chosen_alpha_and_beta_travel_with_the_checkpoint(small_world, tmp_path):
    _fit(small_world, tmp_path)
    (checkpoint,) = [p for p in tmp_path.rglob("*.ckpt") if p.name != "last.ckpt"]
    state = torch.load(checkpoint, map_location="cpu", weights_only=True)
    assert len(state["class_names"]) == 42
    model = DHO.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True)
    assert model.student is not None
    assert math.isclose(float(model.student.alpha), float(state["state_dict"]["student.alpha"]))


@pytest.mark.slow
def test_export_is_a_timm_folder_with_both_heads_and_the_chosen_combination(small_world, tmp_path):
    """vlkd export of a trained DHO run: timm loads the folder as it is (both heads' logits), and
    from_pretrained / create_student give the run's own combined prediction, alpha, beta and classes."""
    import timm

    from vlkd.models import create_student

    _fit(small_world, tmp_path / "run")
    (checkpoint,) = (tmp_path / "run").rglob("last.ckpt")
    out = tmp_path / "exported"
    assert main(["export", str(checkpoint), "--out", str(out)]) == 0
    assert {"model.safetensors", "config.json"} <= {p.name for p in out.iterdir()}
    trained = DHO.load_from_checkpoint(checkpoint, map_location="cpu", weights_only=True).student.eval()
    images = torch.rand(3, 3, trained.image_size, trained.image_size)
    with torch.no_grad():
        expected = trained(images)
        plain = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # timm alone, no vlkd code
        both = plain((images - trained.pixel_mean) / trained.pixel_std)
        torch.testing.assert_close(both, torch.cat([expected.ce, expected.kd], dim=-1), rtol=0, atol=1e-5)
        for loaded in (DualHeadClassifier.from_pretrained(out), create_student("dual_head", folder=str(out))):
            assert float(loaded.alpha) == float(trained.alpha) and float(loaded.beta) == float(trained.beta)
            assert loaded.class_names == json.loads((out / "config.json").read_text())["vlkd_dual_head"]["class_names"]
            assert len(loaded.class_names) == 42
            torch.testing.assert_close(loaded.predict_proba(images), trained.predict_proba(images), rtol=0, atol=1e-6)
    assert main(["export", str(checkpoint), "--out", str(out)]) != 0  # an export is never overwritten silently
    code = ("import sys; from vlkd.models import DualHeadClassifier; "
            f"DualHeadClassifier.from_pretrained({str(out)!r}); assert 'lightning' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)  # no Lightning needed to use it


def test_clip_tower_student_round_trips_through_its_folder(tiny_teacher, tmp_path):
    names = ["red ball on grass", "blue triangle on snow", "green ball on sand"]
    student = DualHeadClassifier.from_clip(tiny_teacher, names).eval()
    student.alpha.fill_(0.3)
    student.beta.fill_(1.5)
    with torch.no_grad():
        student.kd_head.bias.add_(torch.randn(3))  # weights a trained student would have
    student.save_pretrained(tmp_path, names)
    loaded = DualHeadClassifier.from_pretrained(tmp_path)
    images = torch.rand(2, 3, tiny_teacher.image_size, tiny_teacher.image_size)
    with torch.no_grad():
        torch.testing.assert_close(loaded.predict_proba(images), student.predict_proba(images), rtol=0, atol=1e-6)
    assert loaded.class_names == names and float(loaded.beta) == 1.5


def test_timm_students_with_a_head_layer_get_its_width():
    student = DualHeadClassifier.from_timm("mobilenetv3_small_050", num_classes=4, image_size=32)
    out = student(torch.rand(2, 3, 32, 32))
    assert out.ce.shape == (2, 4) and student.ce_head.in_features == student.backbone.head_hidden_size


def test_bad_settings_are_refused():
    from vlkd.errors import ConfigError

    with pytest.raises(ConfigError, match="variant"):
        DHO(variant="dual")
    with pytest.raises(ConfigError, match="lambda"):
        DHO(ce_weight=1.5)


# --------------------------------------------------------------------------- the real-scale configs

REAL_CONFIGS = sorted(p for p in (REPO / "configs").glob("dho_*.yaml") if p.stem != "dho_synth")


def _png(path, value: int) -> None:
    import numpy as np
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((24, 24, 3), value, np.uint8)).save(path)


@pytest.fixture(scope="module")
def real_layouts(tmp_path_factory):
    """A tiny CoOp dataset and a tiny ImageNet tree (1,000 WordNet-id folders), in the real layouts."""
    from vlkd.data.images import ImageSample, write_split_zhou

    root = tmp_path_factory.mktemp("dho_real")
    coop = root / "coop"
    splits = {role: [ImageSample(f"c{label}/{role}_{i}.png", label) for label in range(3) for i in range(count)]
              for role, count in (("train", 6), ("val", 1), ("test", 1))}
    for samples in splits.values():
        for sample in samples:
            _png(coop / "images" / sample.path, 40 * sample.label)
    write_split_zhou(coop / "split_zhou_Tiny.json", splits, ["cat", "dog", "fish"])
    imagenet = root / "imagenet"
    for index in range(1000):
        wnid = f"n{index:08d}"
        for i in range(2):
            _png(imagenet / "train" / wnid / f"{wnid}_{i}.png", index % 250)
        _png(imagenet / "val" / wnid / f"val_{index}.png", index % 250)
    (root / "labelled.txt").write_text("".join(f"n{index:08d}_0.png\n" for index in range(0, 1000, 100)))
    return root


def test_every_dho_config_is_tested():
    assert {p.stem for p in REAL_CONFIGS} >= {"dho_imagenet_1pct", "dho_imagenet_10pct", "dho_fewshot_pets"}


@pytest.mark.slow
@pytest.mark.parametrize("config", REAL_CONFIGS, ids=lambda p: p.stem)
def test_real_config_runs_a_fast_dev_run(config, real_layouts, tmp_path):
    """The real-scale settings on generated data in the real layout, with tiny random-weight CLIP towers."""
    import yaml

    settings = yaml.safe_load(config.read_text())
    model = {"teacher": {"name": "vlkd-tiny-vit", "pretrained": None}}
    if settings["model"]["init_args"]["student"].startswith("clip:"):
        model.update(student="clip:vlkd-tiny-vit", student_pretrained=None)
    else:
        model.update(student_pretrained=False)  # timm's weights are not on disk offline; the architecture is real
    data = {"image_size": 32, "batch_size": 2, "num_workers": 0}
    if settings["data"]["init_args"]["layout"] == "imagenet":
        data.update(root=str(real_layouts / "imagenet"), labelled=str(real_layouts / "labelled.txt"), val_per_class=1)
    else:
        data.update(root=str(real_layouts / "coop" / "images"), split_file=str(real_layouts / "coop" / "split_zhou_Tiny.json"),
                    shots=2)
    trainer = {"accelerator": "cpu", "devices": 1, "strategy": "auto", "precision": "32", "enable_progress_bar": False,
               "default_root_dir": str(tmp_path), "enable_model_summary": False}
    override = tmp_path / "override.yaml"
    override.write_text(yaml.safe_dump({"trainer": trainer, "model": {"init_args": model}, "data": {"init_args": data}}))
    assert main(["fit", "--config", str(config), "--config", str(override), "--trainer.fast_dev_run", "1"]) == 0
