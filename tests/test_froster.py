"""FROSTER, the fine-tuning baseline, epoch weight averaging, and every shipped training config run end to end."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import lightning.pytorch as pl
import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from lightning.pytorch.callbacks import Callback, ModelCheckpoint
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from vlkd.cli import main
from vlkd.data import VideoSample
from vlkd.data.annotations import write_class_names, write_video_list
from vlkd.data.splits import BASE2NOVEL_LAYOUTS, ZERO_SHOT_LAYOUTS, Base2NovelSplit, write_base2novel
from vlkd.data.writer import write_video
from vlkd.methods.callbacks import EpochWeightAveraging
from vlkd.methods.finetune import FineTuneCLIP, warmup_cosine
from vlkd.methods.froster import FROSTER, ResidualProjector
from vlkd.teacher import VIDEO_TEMPLATES, TeacherSpec

REPO = Path(__file__).resolve().parent.parent
TINY = TeacherSpec(name="vlkd-tiny-vit", pretrained=None)
CLASSES = ["running", "jumping", "swimming"]


def _froster(**kwargs) -> FROSTER:
    torch.manual_seed(0)
    return FROSTER(teacher=TINY, **kwargs)


def _clips(batch: int, frames: int, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, frames, 3, 64, 64, generator=torch.Generator().manual_seed(seed))


@pytest.fixture(scope="module")
def froster() -> FROSTER:
    """A FROSTER model at initialisation; tests using it must not train it."""
    return _froster()


# --------------------------------------------------------------------------- FROSTER


def test_zero_initialised_residual_projector_is_the_identity():
    projector = ResidualProjector(16, alpha=0.1)
    features = torch.randn(4, 3, 16)
    torch.testing.assert_close(projector(features), features)
    assert projector.mlp[0].bias is None and projector.mlp[2].bias is None


def test_projector_first_layer_is_kaiming_normal():
    torch.manual_seed(0)
    weight = ResidualProjector(512).mlp[0].weight
    # Kaiming-normal (fan-in, ReLU gain): std sqrt(2 / 512) = 0.0625; PyTorch's default would give 0.0255.
    assert abs(weight.std().item() - (2 / 512) ** 0.5) < 0.002
    assert abs(weight.mean().item()) < 0.001


def test_at_initialisation_the_student_is_the_teacher_and_distillation_is_zero(froster):
    video, labels = _clips(2, 1), torch.tensor([0, 2])
    with torch.no_grad():
        loss, terms, logits = froster.training_loss(video, labels, CLASSES)
        student = froster.student.encode_video(video, normalize=True)
    torch.testing.assert_close(student, froster.teacher.encode_frames(video), rtol=1e-5, atol=1e-5)
    assert terms["distill_visual"].abs() < 1e-5
    assert terms["distill_text"].abs() < 1e-5
    assert torch.isfinite(terms["ce"]) and logits.shape == (2, 3)
    torch.testing.assert_close(loss, sum(terms.values()))


def test_eval_logits_at_initialisation_equal_the_frozen_teachers(froster):
    """Student text tower + all templates ensembled = the teacher's zero-shot classifier at step 0."""
    video = _clips(2, 1)
    with torch.no_grad():
        logits = froster.classify(video, CLASSES)
    teacher = froster.teacher
    text = teacher.encode_text(CLASSES, VIDEO_TEMPLATES)
    expected = teacher.logit_scale * teacher.encode_frames(video)[:, 0] @ text.T
    torch.testing.assert_close(logits, expected, rtol=1e-4, atol=1e-4)
    assert tuple(CLASSES) in froster._eval_text  # cached until the next training step / evaluation epoch


def test_teacher_gets_no_gradient_and_no_optimiser_state():
    model = _froster()
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=1e-4)
    loss, _, _ = model.training_loss(_clips(2, 2), torch.tensor([0, 1]), CLASSES)
    loss.backward()
    optimizer.step()
    teacher_params = {id(p) for p in model.teacher.parameters()}
    assert all(p.grad is None for p in model.teacher.parameters())
    in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
    assert not in_optimizer & teacher_params
    assert not {id(p) for p in optimizer.state} & teacher_params
    # The projectors train; the logit scale is fixed at the pretrained value.
    assert {id(p) for p in model.visual_projector.parameters()} <= in_optimizer
    assert id(model.student.model.logit_scale) not in in_optimizer


def test_weight_decay_skips_biases_norms_and_embeddings(froster):
    decay, no_decay = froster.parameter_groups()
    names = {id(p): n for n, p in froster.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    exempt = {names[id(p)] for p in no_decay["params"]}
    assert "student.model.visual.proj" in decayed and "visual_projector.mlp.0.weight" in decayed
    assert {"student.model.positional_embedding", "student.model.visual.class_embedding",
            "student.model.token_embedding.weight", "student.model.visual.ln_pre.weight"} <= exempt
    assert not any(name.endswith(".bias") for name in decayed)
    assert no_decay["weight_decay"] == 0.0 and decay["weight_decay"] == 0.01


def test_loss_decreases_on_a_tiny_batch():
    model = _froster(temporal="neighbour")
    optimizer = torch.optim.AdamW(model.parameter_groups(), lr=1e-4)
    video, labels = _clips(2, 2), torch.tensor([0, 2])
    losses = []
    for _ in range(4):
        loss, _, _ = model.training_loss(video, labels, CLASSES)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0], losses


def test_ablation_flags_change_the_loss_terms_and_the_projectors():
    plain = _froster(residual=False)
    assert plain.visual_projector is None and plain.text_projector is None
    no_text = _froster(text_distill=False, visual_distill=True)
    assert no_text.text_projector is None and no_text.visual_projector is not None
    _, terms, _ = no_text.training_loss(_clips(1, 2), torch.tensor([1]), CLASSES)
    assert set(terms) == {"ce", "distill_visual"}
    weighted = _froster(distill_weight=4.0, temporal="none")
    _, terms, _ = weighted.training_loss(_clips(1, 2), torch.tensor([1]), CLASSES)
    assert set(terms) == {"ce", "distill_visual", "distill_text"}


def test_building_the_projectors_leaves_the_global_random_stream_alone():
    # The ablations build fewer projectors; the same seed must still give them the same
    # data order and augmentation draws as FROSTER, or a benchmark compares random streams.
    after = {}
    for residual in (True, False):
        _froster(residual=residual)
        after[residual] = torch.rand(8)
    torch.testing.assert_close(after[True], after[False])


def test_checkpoint_holds_student_and_projectors_not_the_teacher_and_loads_strictly(froster):
    state = froster.state_dict()
    assert not any(key.startswith("teacher.") for key in state)
    assert "visual_projector.mlp.2.weight" in state and "text_projector.mlp.0.weight" in state
    assert "student.model.visual.conv1.weight" in state
    other = _froster()
    with torch.no_grad():
        other.student.model.visual.proj.add_(1.0)
    other.load_state_dict(state, strict=True)
    torch.testing.assert_close(other.student.model.visual.proj, froster.student.model.visual.proj)


def test_training_samples_one_template_per_step_and_descriptions_are_appended(tmp_path):
    descriptions = tmp_path / "descriptions.json"
    descriptions.write_text(json.dumps({"running": "Legs move fast."}))
    model = _froster(class_descriptions=str(descriptions), templates=["a video of a person {}.", "someone {}."])
    prompts = model.prompts(["running", "jumping"], "a video of a person {}.")
    assert prompts == ["a video of a person running. Legs move fast.", "a video of a person jumping."]
    assert model.sample_template() in model.templates
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="JSON object"):
        _froster(class_descriptions=str(tmp_path / "bad.json"))
    # The authors' index-keyed files ({"0": "Abseiling: ..."}) would silently match no class.
    (tmp_path / "by_index.json").write_text(json.dumps({"0": "Abseiling: descending a rock face."}))
    with pytest.raises(ValueError, match="keys are class indices"):
        _froster(class_descriptions=str(tmp_path / "by_index.json"))


def test_descriptions_that_name_no_class_stop_the_fit(world, tmp_path, capsys):
    descriptions = tmp_path / "other_classes.json"
    descriptions.write_text(json.dumps({"abseiling": "Descending a rock face on a rope."}))
    args = tiny_overrides(REPO / "configs" / "froster_ucf_b2n.yaml", world, tmp_path)
    assert main(["fit", *args, "--trainer.fast_dev_run", "1",
                 "--model.init_args.class_descriptions", str(descriptions)]) == 2
    assert "names none of the 4 classes of this run" in capsys.readouterr().err
    # Descriptions of the novel (evaluation) classes only are a choice, not a mistake.
    descriptions.write_text(json.dumps({"swimming": "Arms pull through water."}))
    assert main(["fit", *args, "--trainer.fast_dev_run", "1",
                 "--model.init_args.class_descriptions", str(descriptions)]) == 0


def test_warmup_then_cosine_schedule():
    factor = warmup_cosine(warmup_steps=4, total_steps=12)
    values = [factor(step) for step in range(12)]
    assert values[:4] == [0.25, 0.5, 0.75, 1.0]
    assert all(a >= b for a, b in zip(values[3:], values[4:])) and values[-1] < 0.05
    assert warmup_cosine(0, 10)(0) == 1.0
    # The authors' floor: warm-up from 1 % of the peak, cosine back down to 1 %.
    floored = warmup_cosine(warmup_steps=4, total_steps=12, floor=0.01)
    assert floored(0) == pytest.approx(0.01 + 0.99 * 0.25) and floored(3) == pytest.approx(1.0)
    assert floored(12) == pytest.approx(0.01) and min(floored(step) for step in range(13)) >= 0.01
    with pytest.raises(ValueError, match="min_lr_ratio"):
        _froster(min_lr_ratio=1.0)


def test_finetune_baseline_has_no_teacher_and_only_cross_entropy():
    torch.manual_seed(0)
    model = FineTuneCLIP(clip=TINY)
    assert not hasattr(model, "teacher") and model.student.temporal == "none" and model.pooling == "features"
    _, terms, logits = model.training_loss(_clips(2, 2), torch.tensor([0, 1]), CLASSES)
    assert set(terms) == {"ce"} and logits.shape == (2, 3)


# --------------------------------------------------------------------------- weight averaging


class _Toy(pl.LightningModule):
    """A linear "student" plus a training-only head, trained by SGD on fixed data."""

    def __init__(self):
        super().__init__()
        self.student = nn.Linear(3, 2)
        self.head = nn.Linear(2, 1)

    def training_step(self, batch, batch_idx):
        x, y = batch
        return F.mse_loss(self.head(self.student(x)), y)

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)

    def train_dataloader(self):
        g = torch.Generator().manual_seed(0)
        return DataLoader(TensorDataset(torch.randn(8, 3, generator=g), torch.randn(8, 1, generator=g)), batch_size=4)


class _Snapshots(Callback):
    def __init__(self):
        self.weights = []

    def on_train_epoch_end(self, trainer, pl_module):
        self.weights.append({k: v.clone() for k, v in pl_module.student.state_dict().items()})


def _fit_toy(tmp_path: Path, max_epochs: int, start_epoch: int, ckpt_path=None, snapshots=None) -> _Toy:
    torch.manual_seed(0)
    model = _Toy()
    averaging = EpochWeightAveraging(start_epoch=start_epoch)
    trainer = pl.Trainer(
        max_epochs=max_epochs, accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
        default_root_dir=tmp_path, callbacks=[averaging, ModelCheckpoint(tmp_path / "ckpt", save_last=True),
                                              *([snapshots] if snapshots else [])],
    )
    trainer.fit(model, ckpt_path=ckpt_path)
    return model


def test_averaged_weights_equal_the_mean_of_the_saved_epochs(tmp_path):
    snapshots = _Snapshots()
    model = _fit_toy(tmp_path, max_epochs=4, start_epoch=1, snapshots=snapshots)
    assert len(snapshots.weights) == 4
    for key, value in model.student.state_dict().items():
        expected = torch.stack([epoch[key] for epoch in snapshots.weights[1:]]).mean(dim=0)
        torch.testing.assert_close(value, expected)
    assert not torch.allclose(model.student.weight, snapshots.weights[-1]["weight"])
    # The averaged model is saved next to last.ckpt, which keeps the raw weights and the running mean.
    averaged = torch.load(tmp_path / "ckpt" / "averaged.ckpt", weights_only=False)["state_dict"]
    torch.testing.assert_close(averaged["student.weight"], model.student.weight)
    last = torch.load(tmp_path / "ckpt" / "last.ckpt", weights_only=False)
    torch.testing.assert_close(last["state_dict"]["student.weight"], snapshots.weights[-1]["weight"])
    (state,) = [v for k, v in last["callbacks"].items() if "EpochWeightAveraging" in k]
    assert state["num_averaged"] == 3


def test_a_resumed_run_continues_the_average(tmp_path):
    straight = _fit_toy(tmp_path / "straight", max_epochs=4, start_epoch=1)
    _fit_toy(tmp_path / "resumed", max_epochs=2, start_epoch=1)
    resumed = _fit_toy(tmp_path / "resumed", max_epochs=4, start_epoch=1,
                       ckpt_path=tmp_path / "resumed" / "ckpt" / "last.ckpt")
    torch.testing.assert_close(resumed.student.weight, straight.student.weight)


def test_averaging_state_round_trips_and_never_counts_an_epoch_twice():
    module = SimpleNamespace(student=nn.Linear(2, 2))
    first = EpochWeightAveraging()
    seen = []
    for epoch in range(3):
        with torch.no_grad():
            module.student.weight.fill_(float(epoch))
        first.on_train_epoch_end(SimpleNamespace(current_epoch=epoch), module)
        first.on_train_epoch_end(SimpleNamespace(current_epoch=epoch), module)  # repeated hook: ignored
        seen.append(float(epoch))
        second = EpochWeightAveraging()
        second.load_state_dict(first.state_dict())
        assert second.num_averaged == epoch + 1
    torch.testing.assert_close(second.average["weight"], torch.full((2, 2), float(np.mean(seen))))


# --------------------------------------------------------------------------- configs through the CLI

COLOURS = {"running": (220, 30, 30), "jumping": (30, 200, 40), "swimming": (30, 40, 220), "climbing": (240, 240, 240)}
NAMES = list(COLOURS)
B2N_DATASETS = {"froster_k400_b2n": "k400", "froster_hmdb_b2n": "hmdb51", "froster_ucf_b2n": "ucf101",
                "froster_ssv2_b2n": "ssv2", "finetune_k400_b2n": "k400", "zeroshot_k400_b2n": "k400"}


def write_world(root: Path, videos_per_class: int = 2) -> Path:
    """Four solid-colour classes; every shipped split layout (base-to-novel and zero-shot) under root/splits.

    Base classes are the first two, novel the last two; every list has an even length
    (4 videos per half, 8 per zero-shot set), so two DDP ranks split them without padding.
    """
    samples = []
    for label, name in enumerate(NAMES):
        for k in range(videos_per_class):
            frames = np.empty((6, 32, 32, 3), np.uint8)
            frames[:] = np.array(COLOURS[name], np.uint8)
            frames[:, :, (5 * k) % 32] = 128
            write_video(root / f"videos/{name}_{k}.mp4", frames, fps=6)
            samples.append(VideoSample(f"videos/{name}_{k}.mp4", label))
    base = [s for s in samples if s.label < 2]
    novel = [VideoSample(s.path, s.label - 2) for s in samples if s.label >= 2]
    split_dir = root / "splits"
    for dataset in BASE2NOVEL_LAYOUTS:
        split = Base2NovelSplit(dataset, NAMES[:2], NAMES[2:], base, base, novel)
        write_base2novel(split, split_dir, dataset=dataset, seed=1)
    for layout in ZERO_SHOT_LAYOUTS.values():
        for split in (1, 2, 3):
            write_class_names(NAMES, split_dir / "labels" / layout.labels.format(split=split))
            write_video_list(samples, split_dir / "zero_shot" / layout.samples.format(split=split))
    write_video_list(samples, root / "train.txt")
    write_class_names(NAMES, root / "classes.csv")
    return root


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    return write_world(tmp_path_factory.mktemp("froster_world"))


def tiny_overrides(config: Path, world: Path, out: Path, **trainer) -> list[str]:
    """CLI arguments that point a shipped config at the tiny world, the tiny CLIP and the CPU."""
    data = {"root": str(world), "num_frames": 2, "image_size": 64, "batch_size": 2, "num_workers": 0,
            "test_views": 1}
    if "scale_jitter" in yaml.safe_load(config.read_text())["data"]["init_args"]:
        data["scale_jitter"] = [64, 73]  # the shipped 224..256 range, for 64-pixel crops
    if config.stem in SYNTH_CONFIGS:
        data.update(TINY_SYNTH, root=str(out / "synth" / "flat"), zero_shot_styles=["textured"])
        del data["test_views"]
    elif config.stem in B2N_DATASETS:
        data["base2novel"] = {"dataset": B2N_DATASETS[config.stem], "seed": 1, "split_dir": str(world / "splits")}
    else:  # the cross-dataset protocol: the three zero-shot sets, and K400 training where the config trains
        data["zero_shot"] = [{"dataset": name, "root": str(world), "split": [1, 2, 3], "split_dir": str(world / "splits")}
                             for name in ("ucf101", "hmdb51", "k600")]
        if "train_list" in yaml.safe_load(config.read_text())["data"]["init_args"]:
            data.update(train_list=str(world / "train.txt"), train_classes=str(world / "classes.csv"))
    override = out / f"{config.stem}_override.yaml"
    override.parent.mkdir(parents=True, exist_ok=True)
    trainer = {"accelerator": "cpu", "devices": 1, "precision": "32", "default_root_dir": str(out / "runs"),
               "enable_progress_bar": False, "enable_model_summary": False, **trainer}
    # The weights go in the YAML: on the command line jsonargparse reads `pretrained null` as the string "None".
    weights = "clip" if config.stem.startswith("finetune") else "teacher"
    # fp32 teacher: the configs' fp16 autocast is slow on CPUs.
    model = {weights: {"name": "vlkd-tiny-vit", "pretrained": None, "precision": "fp32"}}
    config_text = {"trainer": trainer, "model": {"init_args": model}, "data": {"init_args": data}}
    override.write_text(yaml.safe_dump(config_text))
    return ["--config", str(config), "--config", str(override)]


TRAINING_CONFIGS = sorted(p for p in (REPO / "configs").glob("*.yaml") if p.stem.startswith(("froster", "finetune")))


SYNTH_CONFIGS = {"froster_synth", "finetune_synth"}
# A SynthActions world small enough to render in a few seconds.
TINY_SYNTH = {"size": 32, "frames": 4, "clips_per_class": 1, "train_clips_per_class": 2, "shots": 1}


REAL_ZERO_SHOT_CONFIGS = sorted(p for p in (REPO / "configs").glob("zeroshot_*.yaml") if p.stem != "zeroshot_synth")


def test_every_froster_config_is_tested():
    tested = {p.stem for p in TRAINING_CONFIGS + REAL_ZERO_SHOT_CONFIGS}
    assert tested == {"froster_k400", "zeroshot_cross_dataset", *B2N_DATASETS, *SYNTH_CONFIGS}


@pytest.mark.parametrize("config", REAL_ZERO_SHOT_CONFIGS, ids=lambda p: p.stem)
def test_shipped_zero_shot_config_scores_every_set(config, world, tmp_path):
    """The frozen-teacher rows at real scale: `vlkd test` on the tiny world in the same layout."""
    assert main(["test", *tiny_overrides(config, world, tmp_path)]) == 0
    (results_file,) = (tmp_path / "runs").rglob("results.json")
    results = json.loads(results_file.read_text())
    expected = {"base", "novel", "hm"} if config.stem in B2N_DATASETS else {"ucf101", "hmdb51", "k600"}
    assert expected <= set(results)


@pytest.mark.parametrize("config", TRAINING_CONFIGS, ids=lambda p: p.stem)
def test_shipped_config_runs_one_fast_dev_run_step(config, world, tmp_path):
    assert main(["fit", *tiny_overrides(config, world, tmp_path), "--trainer.fast_dev_run", "1"]) == 0
    if config.stem == "froster_k400":  # cross-dataset: every split of every set, summarised per dataset
        results = json.loads((tmp_path / "runs" / "results.json").read_text())
        assert {"ucf101", "hmdb51", "k600"} <= set(results)
        assert {f"{name}_s{split}_top1" for name in ("ucf101", "hmdb51", "k600") for split in (1, 2, 3)} <= set(
            results["metrics"])


# Clips per optimisation step in the authors' training scripts (TRAIN.BATCH_SIZE, the total over 8 GPUs).
AUTHORS_BATCH = {"froster_k400": 64, "froster_k400_b2n": 32, "froster_hmdb_b2n": 32, "froster_ucf_b2n": 64,
                 "froster_ssv2_b2n": 32, "finetune_k400_b2n": 32}


@pytest.mark.parametrize("name", sorted(AUTHORS_BATCH))
def test_real_scale_configs_keep_the_authors_batch_and_averaging(name):
    config = yaml.safe_load((REPO / "configs" / f"{name}.yaml").read_text())
    trainer, data = config["trainer"], config["data"]["init_args"]
    clips_per_step = data["batch_size"] * trainer["devices"] * trainer.get("accumulate_grad_batches", 1)
    assert clips_per_step == AUTHORS_BATCH[name]
    # The authors average their checkpoints 2..last, numbered from 1: 0-based epochs 1..last.
    (averaging,) = [c for c in trainer["callbacks"] if c["class_path"].endswith("EpochWeightAveraging")]
    assert averaging["init_args"]["start_epoch"] == 1


def test_fit_then_test_from_the_averaged_checkpoint(world, tmp_path):
    """Three one-step epochs (averaging starts at epoch 2) write averaged.ckpt and last.ckpt;
    `vlkd test` loads the averaged checkpoint (strictly) and writes results."""
    config = REPO / "configs" / "froster_ucf_b2n.yaml"
    args = tiny_overrides(config, world, tmp_path, max_epochs=3, limit_train_batches=1, limit_val_batches=1,
                          num_sanity_val_steps=0, log_every_n_steps=1)
    assert main(["fit", *args, "--model.init_args.warmup_epochs", "1"]) == 0
    (averaged,) = (tmp_path / "runs").rglob("averaged.ckpt")
    assert (averaged.parent / "last.ckpt").is_file()
    checkpoint = torch.load(averaged, weights_only=False)
    assert not any(key.startswith("teacher.") for key in checkpoint["state_dict"])
    assert main(["test", *args, "--ckpt_path", str(averaged)]) == 0
    # One results.json from the evaluation that ends `fit` (averaged weights), one from `test`.
    fit_results, test_results = sorted((tmp_path / "runs").rglob("results.json"), key=lambda p: p.stat().st_mtime)
    fitted, tested = json.loads(fit_results.read_text()), json.loads(test_results.read_text())
    assert set(tested) >= {"base", "novel", "hm"}
    # The averaged checkpoint holds exactly the weights that fit evaluated.
    assert tested["metrics"] == pytest.approx(fitted["metrics"])
