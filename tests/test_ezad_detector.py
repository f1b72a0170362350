"""EZAD's detector student: cosine classifier, semantic regression, distillation, inference and export."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlkd.errors import ConfigError
from vlkd.models import create_student, list_students
from vlkd.models.ezad_detector import SMALL_SETTINGS, EZADFasterRCNN

D = 32  # embedding width of the tiny detectors

# A ResNet-18 with a 32-channel FPN and a two-fc head on 64-128 px images: a few hundredths of a second a step.
TINY = dict(backbone="resnet18", fpn_channels=32, min_size=128, max_size=128,
            anchor_sizes=((8,), (16,), (32,), (64,), (128,)),
            shared_convs=0, shared_fcs=2, cls_convs=0, cls_fcs=0, reg_convs=0, reg_fcs=0, fc_channels=64,
            rpn_pre_nms_top_n_train=200, rpn_post_nms_top_n_train=100,
            rpn_pre_nms_top_n_test=200, rpn_post_nms_top_n_test=100, box_batch_size_per_image=64)


def tiny(classes: int = 3, seed: int = 0, **overrides) -> EZADFasterRCNN:
    torch.manual_seed(seed)
    return EZADFasterRCNN(torch.randn(classes, D), **{**TINY, **overrides})


def image(seed: int = 0, height: int = 64, width: int = 64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    pixels = torch.rand(3, height, width, generator=generator) * 0.3
    pixels[0, 12:44, 10:40] = 0.9  # a red block where the box is
    return pixels


BOX = torch.tensor([[10.0, 12.0, 40.0, 44.0]])


def target(label: int = 0) -> dict:
    # DetectionDataset's targets also carry image_id and crowd boxes; the detector reads boxes and labels.
    return {"boxes": BOX.clone(), "labels": torch.tensor([label]), "image_id": 7, "ignore": torch.zeros(0, 4)}


def distill_item(k: int = 2, seed: int = 1) -> dict:
    generator = torch.Generator().manual_seed(seed)
    boxes = torch.tensor([[10.0, 12.0, 40.0, 44.0], [2.0, 3.0, 30.0, 28.0], [30.0, 20.0, 60.0, 62.0]])[:k]
    return {"boxes": boxes, "embeddings": F.normalize(torch.randn(k, D, generator=generator), dim=-1),
            "weights": torch.ones(k)}


def seeded_losses(model, seed: int = 0, **kwargs) -> dict:
    torch.manual_seed(seed)  # the RPN's and the RoI sampler's draws
    return model([image()], [target()], **kwargs)


def test_training_returns_five_finite_losses_and_a_step_moves_the_ezad_parameters():
    model = tiny().train()
    losses = seeded_losses(model, distill=[distill_item()])
    assert set(losses) == {"loss_objectness", "loss_rpn_box_reg", "loss_classifier", "loss_box_reg", "loss_distill"}
    assert all(torch.isfinite(value) and value.dim() == 0 for value in losses.values())
    assert "loss_distill" not in seeded_losses(model)  # only with distillation targets

    predictor = model.predictor
    watched = {"embedding": predictor.map_to_clip.weight, "temperature": predictor.log_temperature,
               "background": predictor.background, "regressor": predictor.fc_reg.weight}
    before = {name: p.detach().clone() for name, p in watched.items()}
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    optimizer.zero_grad()
    sum(losses.values()).backward()
    optimizer.step()
    for name, p in watched.items():
        assert not torch.equal(before[name], p.detach()), f"the {name} did not change"
    assert predictor.class_embeddings.requires_grad is False  # the text embeddings stay frozen


def test_cosine_logits_are_temperature_times_cosine_with_a_background_vector():
    model = tiny(temperature=30.0).eval()
    heads, predictor = model.roi_heads, model.predictor
    features = torch.randn(5, TINY["fpn_channels"], 7, 7)
    with torch.no_grad():
        out = heads.predict(features)
        x_cls, _ = heads.box_head(features)
        embedding = F.normalize(x_cls @ predictor.map_to_clip.weight.t() + predictor.map_to_clip.bias, dim=-1)
        text = F.normalize(predictor.class_embeddings, dim=-1)
        expected = 30.0 * torch.cat([embedding @ text.t(), (embedding @ predictor.background)[:, None]], dim=1)
    assert out["logits"].shape == (5, 4)  # C classes, then background
    assert torch.allclose(out["embeddings"], embedding, atol=1e-6)
    assert torch.allclose(out["logits"], expected, atol=1e-4)
    assert math.isclose(float(predictor.temperature.detach()), 30.0, rel_tol=1e-6)

    with torch.no_grad():
        predictor.background.copy_(predictor.class_embeddings[1] * 2)  # background = twice class 1's direction
        predictor.log_temperature.fill_(math.log(5.0))
        logits = heads.predict(features)["logits"]
    assert torch.allclose(logits[:, 3], 2 * logits[:, 1], atol=1e-4)
    assert torch.allclose(logits[:, :3], 5.0 * embedding @ text.t(), atol=1e-4)

    # Embeddings are normalised when set: their scale does not change the logits.
    model.set_class_embeddings(predictor.class_embeddings * 7.0)
    assert torch.allclose(heads.predict(features)["logits"], logits, atol=1e-4)


def test_a_new_vocabulary_changes_the_classes_detected():
    model = tiny(temperature=10.0, box_detections_per_img=1000).eval()
    pixels = [image()]
    three = model.detect(pixels)
    assert three[0]["labels"].max() < 3 and set(three[0]) == {"boxes", "scores", "labels"}
    five = torch.randn(5, D)
    model.set_class_embeddings(five, ["a", "b", "c", "d", "e"])
    labels = model.detect(pixels)[0]["labels"]
    assert set(labels.tolist()) == {0, 1, 2, 3, 4}
    assert model.roi_heads.predict(torch.randn(2, TINY["fpn_channels"], 7, 7))["logits"].shape == (2, 6)
    # detect(class_embeddings=...) uses them for that call only.
    seven = model.detect(pixels, class_embeddings=torch.randn(7, D))[0]["labels"]
    assert seven.max() >= 5 and model.num_classes == 5 and model.class_names == ["a", "b", "c", "d", "e"]
    assert not model.training  # it was in eval mode before the call


def test_detections_are_in_the_given_images_pixels():
    model = tiny(box_detections_per_img=50).eval()
    small = model.detect([image(height=48, width=64)])[0]["boxes"]  # resized x2 inside
    assert len(small) > 0
    assert small[:, 0::2].max() <= 64 + 1e-4 and small[:, 1::2].max() <= 48 + 1e-4
    assert small[:, 0::2].min() >= 0 and small[:, 1::2].min() >= 0


def test_semantic_regression_reads_the_assigned_classes_text_embedding_in_training():
    model = tiny().train()
    # Class 1 is what every region looks like (the box's own embedding, no background vector), so
    # the arg-max would pick it; the only box is class 0, which the regressor must read instead.
    embeddings = model.class_embeddings.clone()
    embeddings[1] = model.region_embeddings([image()], [BOX])[0][0].detach()
    model.set_class_embeddings(embeddings)
    with torch.no_grad():
        model.predictor.background.zero_()
    read = []
    regress = model.predictor.regress
    model.predictor.regress = lambda x, labels=None: read.append(labels) or regress(x, labels)
    base = seeded_losses(model)
    assert set(read[0].tolist()) == {0, 3}  # the box's class, and C (background, zeros) for the rest

    other = embeddings.clone()
    other[1] = torch.randn(D)  # a class no proposal is assigned to
    model.set_class_embeddings(other)
    changed_other = seeded_losses(model)
    assert torch.allclose(changed_other["loss_box_reg"], base["loss_box_reg"], atol=1e-7)
    assert not torch.allclose(changed_other["loss_classifier"], base["loss_classifier"])

    matched = embeddings.clone()
    matched[0] = torch.randn(D)
    model.set_class_embeddings(matched)
    assert not torch.allclose(seeded_losses(model)["loss_box_reg"], base["loss_box_reg"])

    # Background proposals read zeros; every label reads its own class's (normalised) text embedding.
    predictor = model.predictor
    x_reg = torch.randn(4, model.roi_heads.box_head.reg_dim)
    labels = torch.tensor([0, 2, 3, 1])  # 3 = C: background
    text = predictor.class_embeddings
    rows = torch.stack([text[0], text[2], torch.zeros(D), text[1]])
    expected = torch.cat([x_reg, rows], dim=1) @ predictor.fc_reg.weight.t() + predictor.fc_reg.bias
    assert torch.allclose(predictor.regress(x_reg, labels), expected, atol=1e-5)


def test_semantic_regression_reads_the_predicted_classes_embedding_at_test():
    model = tiny().eval()
    heads, predictor = model.roi_heads, model.predictor
    features = torch.randn(6, TINY["fpn_channels"], 7, 7)
    with torch.no_grad():
        x_cls, x_reg = heads.box_head(features)
        first = predictor.embed(x_cls)[0]
        text = predictor.class_embeddings.clone()
        text[1] = first  # region 0 is class 1 for sure (cosine 1)
        predictor.set_class_embeddings(text)
        predictor.background.zero_()
        out = heads.predict(features)
    predicted = out["logits"].argmax(dim=1)
    assert predicted[0] == 1 and torch.equal(out["regress_labels"], predicted)
    table = torch.cat([predictor.class_embeddings, torch.zeros(1, D)])
    expected = torch.cat([x_reg, table[predicted]], dim=1) @ predictor.fc_reg.weight.t() + predictor.fc_reg.bias
    assert torch.allclose(out["deltas"], expected, atol=1e-5)
    with_zeros = torch.cat([x_reg[:1], torch.zeros(1, D)], dim=1) @ predictor.fc_reg.weight.t() + predictor.fc_reg.bias
    assert not torch.allclose(out["deltas"][:1], with_zeros, atol=1e-4)


def test_without_semantic_regression_the_regressor_reads_the_feature_alone():
    model = tiny(semantic_regression=False).train()
    assert model.predictor.fc_reg.in_features == model.roi_heads.box_head.reg_dim
    base = seeded_losses(model)["loss_box_reg"]
    model.set_class_embeddings(torch.randn(3, D))
    assert torch.allclose(seeded_losses(model)["loss_box_reg"], base, atol=1e-7)


def test_distillation_boxes_in_original_pixels_are_mapped_through_the_resize():
    model = tiny(min_size=96, max_size=128).train()  # a 48 x 64 image is resized x2 on both axes
    pixels = image(height=48, width=64)
    boxes = torch.tensor([[4.0, 5.0, 30.0, 40.0], [20.0, 2.0, 60.0, 20.0]])
    got = model.region_embeddings([pixels], [boxes])[0]
    images, _ = model.transform([pixels])
    assert images.image_sizes == [(96, 128)]
    features = model.backbone(images.tensors)
    heads = model.roi_heads

    def by_hand(rois):
        pooled = heads.box_roi_pool(features, [rois], images.image_sizes)  # RoIAlign on the resized image
        return model.predictor.embed(heads.box_head(pooled)[0])

    assert torch.allclose(got, by_hand(boxes * 2), atol=1e-5)
    assert not torch.allclose(got, by_hand(boxes), atol=1e-3)

    # The training loss sees the same boxes: teacher targets equal to the student's give zero loss.
    item = {"boxes": boxes, "embeddings": got.detach(), "weights": torch.tensor([1.0, 2.0])}
    zero = model([pixels], [{"boxes": torch.tensor([[4.0, 5.0, 30.0, 40.0]]), "labels": torch.tensor([2])}],
                 distill=[item])["loss_distill"]
    assert float(zero.detach()) < 1e-5


@pytest.mark.parametrize("factor", [None, 7.0])
def test_distillation_loss_is_the_weighted_l1_times_the_factor(factor):
    model = tiny(distill_factor=factor).train()
    first, second = image(0), image(1)
    boxes = [distill_item(2)["boxes"], distill_item(1)["boxes"]]
    student = [e.detach() for e in model.region_embeddings([first, second], boxes)]
    generator = torch.Generator().manual_seed(3)
    teacher = [F.normalize(s + 0.3 * torch.randn(s.shape, generator=generator), dim=-1) for s in student]
    weights = [torch.tensor([1.0, 3.0]), torch.tensor([5.0])]
    distill = [{"boxes": b, "embeddings": 4.0 * t, "weights": w}  # the teacher's scale does not matter
               for b, t, w in zip(boxes, teacher, weights)]
    loss = model([first, second], [target(), target(1)], distill=distill)["loss_distill"]
    # Each image's weights rescaled to mean 1: [0.5, 1.5] and [1]; the mean over the 3 x D elements, times the factor.
    normalised = torch.tensor([0.5, 1.5, 1.0])
    error = (torch.cat(student) - torch.cat(teacher)).abs()
    expected = (D if factor is None else factor) * (normalised[:, None] * error).sum() / (3 * D)
    assert torch.allclose(loss, expected, rtol=1e-4)
    assert float(loss.detach()) > 0.1


def test_region_targets_get_the_rpn_proposals_in_original_pixels():
    model = tiny(min_size=96, max_size=128, distill_proposals=20).train()
    pixels = image(height=48, width=64)
    seen = []

    def teacher(proposals):
        seen.append([p.clone() for p in proposals])
        return [{"boxes": p, "embeddings": F.normalize(torch.ones(len(p), D), dim=-1)} for p in proposals]

    torch.manual_seed(0)
    losses = model([pixels], [target()], region_targets=teacher)
    assert "loss_distill" in losses and len(seen) == 1 and len(seen[0]) == 1
    got = seen[0][0]
    assert got.shape == (20, 4)

    # The RPN's own proposals on the resized (x2) image, top 20 after NMS, halved.
    images, targets = model.transform([pixels], [{"boxes": BOX.clone(), "labels": torch.tensor([1])}])
    proposals, _ = model.rpn(images, model.backbone(images.tensors), targets)
    assert torch.allclose(got, proposals[0][:20] / 2, atol=1e-4)
    assert got[:, 0::2].max() <= 64 + 1e-4 and got[:, 1::2].max() <= 48 + 1e-4

    # What the callable returns is distilled as if given as `distill`.
    torch.manual_seed(0)
    direct = model([pixels], [target()], distill=[{"boxes": got, "embeddings": torch.ones(20, D)}])
    torch.manual_seed(0)
    again = model([pixels], [target()], region_targets=teacher)
    assert torch.allclose(direct["loss_distill"], again["loss_distill"], atol=1e-5)


def test_twenty_steps_overfit_one_image():
    model = tiny(classes=2).train()
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    history = []
    torch.manual_seed(0)
    for _ in range(20):
        losses = model([image()], [target()], distill=[distill_item(2)])
        optimizer.zero_grad()
        sum(losses.values()).backward()
        optimizer.step()
        history.append({key: float(value.detach()) for key, value in losses.items()})
    totals = [sum(step.values()) for step in history]
    assert sum(totals[-3:]) / 3 < 0.5 * sum(totals[:3]) / 3, totals
    assert history[-1]["loss_objectness"] < 0.25 * history[0]["loss_objectness"]
    assert history[-1]["loss_distill"] < 0.8 * history[0]["loss_distill"]


def test_save_and_load_give_identical_detections(tmp_path):
    model = tiny(box_detections_per_img=30).eval()
    before = model.detect([image()])
    folder = model.save_pretrained(tmp_path / "ezad", ["red ball", "blue ball", "red triangle"],
                                   metadata={"teacher": "vlkd-synth-vit"})
    assert {p.name for p in folder.iterdir()} == {"model.safetensors", "config.json"}
    loaded = EZADFasterRCNN.from_pretrained(folder)
    assert not loaded.training and loaded.class_names == ["red ball", "blue ball", "red triangle"]
    assert loaded.metadata == {"teacher": "vlkd-synth-vit"}
    assert torch.equal(loaded.class_embeddings, model.class_embeddings)
    after = loaded.detect([image()])
    for key in ("boxes", "scores", "labels"):
        assert torch.equal(before[0][key], after[0][key])
    again = create_student("ezad_faster_rcnn", folder=str(folder))
    assert torch.equal(again.detect([image()])[0]["scores"], before[0]["scores"])
    with pytest.raises(ConfigError, match="2 class names"):
        model.save_pretrained(tmp_path / "bad", ["a", "b"])


def test_a_checkpoint_with_another_vocabulary_size_loads():
    source, other = tiny(classes=5), tiny(classes=3, seed=1)
    other.load_state_dict(source.state_dict())
    assert other.num_classes == 5 and torch.equal(other.class_embeddings, source.class_embeddings)


def test_create_student_builds_a_detector():
    assert "ezad_faster_rcnn" in list_students()
    model = create_student("ezad_faster_rcnn", class_embeddings=torch.randn(4, D), class_names=list("abcd"), **TINY)
    assert isinstance(model, EZADFasterRCNN) and model.num_classes == 4 and model.class_names == list("abcd")
    later = create_student("ezad_faster_rcnn", embed_dim=D, **TINY)
    assert later.num_classes == 0
    with pytest.raises(ConfigError, match="set_class_embeddings"):
        later.eval()([image()])
    with pytest.raises(ConfigError, match="needs class_embeddings"):
        create_student("ezad_faster_rcnn")


def test_the_default_is_ezads_real_scale_detector():
    model = EZADFasterRCNN(torch.randn(65, 512))
    assert type(model.backbone.body.layer4[0]).__name__ == "Bottleneck" and model.backbone.out_channels == 256
    assert model.transform.min_size == (800,) and model.transform.max_size == 1333
    head = model.roi_heads.box_head
    assert (len(head.shared_convs), len(head.shared_fcs), len(head.cls_convs), len(head.reg_convs)) == (3, 0, 1, 1)
    assert len(head.cls_fcs) == len(head.reg_fcs) == 4  # two fc + ReLU pairs each, 1,024 wide
    assert head.cls_dim == head.reg_dim == 1024
    predictor = model.predictor
    assert isinstance(predictor.log_temperature, torch.nn.Parameter)
    assert math.isclose(float(predictor.temperature.detach()), 100.0, rel_tol=1e-5)
    assert predictor.fc_reg.in_features == 1024 + 512 and predictor.fc_reg.out_features == 4
    assert model.roi_heads.distill_factor == 512.0 and model.roi_heads.score_thresh == 0.0
    assert model.roi_heads.nms_thresh == 0.5 and model.roi_heads.detections_per_img == 100
    # From scratch: batch norm and every ResNet layer trainable (torchvision's rule without weights).
    assert all(p.requires_grad for p in model.backbone.body.parameters())
    assert isinstance(model.backbone.body.bn1, torch.nn.BatchNorm2d)


def test_bad_input_raises_config_errors_naming_the_problem():
    model = tiny()
    with pytest.raises(ConfigError, match=r"shape \(K, 32\)"):
        model.set_class_embeddings(torch.randn(3, 16))
    with pytest.raises(ConfigError, match="all zeros"):
        model.set_class_embeddings(torch.zeros(2, D))
    model.train()
    bad_boxes = dict(distill_item(), boxes=torch.rand(2, 3))
    with pytest.raises(ConfigError, match=r"distill\[0\] boxes must be a \(K, 4\)"):
        model([image()], [target()], distill=[bad_boxes])
    bad_width = dict(distill_item(), embeddings=torch.randn(2, 16))
    with pytest.raises(ConfigError, match=r"distill\[0\] embeddings must have shape \(K, 32\)"):
        model([image()], [target()], distill=[bad_width])
    with pytest.raises(ConfigError, match="2 boxes but 1 embeddings"):
        model([image()], [target()], distill=[dict(distill_item(), embeddings=torch.randn(1, D))])
    with pytest.raises(ConfigError, match=r"labels must be in \[0, 3\)"):
        model([image()], [target(label=3)])
    with pytest.raises(ConfigError, match="training needs targets"):
        model([image()])
    with pytest.raises(ConfigError, match="not both"):
        model([image()], [target()], distill=[distill_item()], region_targets=lambda p: [])
    with pytest.raises(ConfigError, match="for training"):
        model.eval()([image()], [target()])
    with pytest.raises(ConfigError, match=r"\(3, H, W\)"):
        model.detect([torch.rand(64, 64)])
    with pytest.raises(ConfigError, match="unknown backbone"):
        tiny(backbone="vgg16")
    with pytest.raises(ConfigError, match="need shared_fcs=0"):
        tiny(cls_convs=1)
    with pytest.raises(ConfigError, match="one tuple per FPN level"):
        tiny(anchor_sizes=((16,), (32,)))


def test_imagenet_weights_from_a_file_freeze_batch_norm_and_the_first_stages(tmp_path):
    from torchvision.models import resnet18
    from torchvision.ops.misc import FrozenBatchNorm2d

    from vlkd.errors import MissingFileError

    torch.manual_seed(5)
    source = resnet18()
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    model = tiny(weights=str(tmp_path / "resnet18.pth"))
    body = model.backbone.body
    assert torch.equal(body.layer3[0].conv1.weight, source.layer3[0].conv1.weight)
    assert isinstance(body.bn1, FrozenBatchNorm2d)
    assert torch.equal(body.bn1.running_var, source.bn1.running_var)
    assert not body.conv1.weight.requires_grad and not body.layer1[0].conv1.weight.requires_grad
    assert body.layer2[0].conv1.weight.requires_grad and body.layer4[0].conv1.weight.requires_grad
    assert model.settings["norm"] == "frozen" and model.settings["trainable_layers"] == 3
    with pytest.raises(MissingFileError, match="resnet18 weights file"):
        tiny(weights=str(tmp_path / "absent.pth"))


def test_create_student_embeds_class_names_with_a_teacher(tiny_teacher):
    names = ["red ball", "blue triangle"]
    model = create_student("ezad_faster_rcnn", teacher=tiny_teacher, class_names=names, **TINY)
    assert model.embed_dim == tiny_teacher.embed_dim and model.class_names == names
    assert torch.allclose(model.class_embeddings, tiny_teacher.encode_text(names, "photo").float(), atol=1e-6)


def test_the_offline_settings_train_on_128_px_images():
    model = EZADFasterRCNN(torch.randn(12, D), **SMALL_SETTINGS).train()
    torch.manual_seed(0)
    losses = model([image(height=128, width=128)], [target()], distill=[distill_item(3)])
    assert len(losses) == 5 and all(torch.isfinite(v) for v in losses.values())
    images, _ = model.transform([image(height=128, width=128)])
    assert images.image_sizes == [(256, 256)]
