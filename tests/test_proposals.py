"""CLIP proposals and the detection teacher cache: anchors, the entropy score, the base filter, stored regions."""

from __future__ import annotations

import json
import math

import pytest
import torch

from vlkd.data.detection_datamodule import SynthDetectionDataModule
from vlkd.errors import ConfigError
from vlkd.teacher import RegionCrop, create_teacher
from vlkd.teacher.cache import verify_cache
from vlkd.teacher.detection_cache import DetectionCache, build_detection_cache
from vlkd.teacher.proposals import ProposalSettings, dense_anchors, entropy_score, generate_proposals, resized_size

CROP = RegionCrop(1.2, 10, True)
SETTINGS = ProposalSettings(stride=16, sizes=(16, 32), ratios=(1.0,), min_size=None, max_size=None,
                            score_crop=CROP, embed_crop=CROP, pre_filter=40, keep=10)


@pytest.fixture(scope="module")
def teacher():
    return create_teacher("vlkd-synth-vit", pretrained="synthactions")


@pytest.fixture(scope="module")
def datamodule(tmp_path_factory):
    from vlkd.data.synthetic.detection import generate_detection

    root = tmp_path_factory.mktemp("synth_detection")
    generate_detection(root, train_images=6, val_images=3)
    module = SynthDetectionDataModule(root=str(root), num_workers=0, batch_size=2)
    module.setup("fit")
    return module


def test_dense_anchors_cover_the_grid_with_every_size_and_ratio_clipped():
    anchors = dense_anchors(64, 96, 32, (32, 64), (0.5, 1.0, 2.0))
    assert anchors.shape == (2 * 3 * 2 * 3, 4)
    assert anchors[:, 0::2].min() >= 0 and anchors[:, 2].max() <= 96 and anchors[:, 3].max() <= 64
    first = anchors[:6]  # the point (16, 16): size 32 ratio 1 is the square [0, 0, 32, 32]
    assert [0.0, 0.0, 32.0, 32.0] in first.tolist()
    # ratio = height / width: size 32 ratio 2 is 22.6 wide, 45.3 high before clipping
    tall = dense_anchors(1000, 1000, 1000, (32,), (2.0,))[0]
    assert tall[2] - tall[0] == pytest.approx(32 / math.sqrt(2), abs=1e-3)
    assert tall[3] - tall[1] == pytest.approx(32 * math.sqrt(2), abs=1e-3)


def test_resized_size_follows_the_detector_resize():
    assert resized_size(480, 640, 800, 1333) == (800.0, pytest.approx(1066.67, abs=0.01))
    assert resized_size(400, 2000, 800, 1333) == (pytest.approx(266.6, abs=0.1), pytest.approx(1333.0))
    assert resized_size(50, 70, None, None) == (50.0, 70.0)


def test_entropy_score_is_log_c_minus_entropy():
    uniform = torch.full((1, 4), 0.25)
    one_hot = torch.tensor([[1.0, 0.0, 0.0, 0.0]])
    mixed = torch.tensor([[0.5, 0.5, 0.0, 0.0]])
    scores = entropy_score(torch.cat([uniform, one_hot, mixed]))
    assert scores.tolist() == pytest.approx([0.0, math.log(4), math.log(4) - math.log(2)], abs=1e-5)


def test_proposals_are_scored_filtered_and_embedded_like_encode_regions(teacher, datamodule):
    names = datamodule.class_names
    text = teacher.encode_text(names, ["a photo of a {}"])
    base = torch.tensor([n in datamodule.base_names for n in names])
    anchors = dense_anchors(128, 128, 16, (16, 32), (1.0,))
    dataset = datamodule.train_dataset(augment=False, with_cache=False)
    for index in range(len(dataset)):  # the first training image where the filters leave a proposal
        item = dataset.read(index)
        image, base_boxes = item["image"], item["target"]["boxes"]
        found = generate_proposals(teacher, image, text, base_boxes, base, SETTINGS)
        assert found.anchors == len(anchors) and len(found) <= SETTINGS.keep
        if len(found):
            break
    assert len(found), "no training image kept a proposal"
    # every kept box: an anchor, far from the base boxes, with a novel top class, best first
    from torchvision.ops import box_iou

    assert all(any(torch.equal(box, a) for a in anchors) for box in found.boxes)
    assert box_iou(found.boxes, base_boxes).max() < SETTINGS.base_iou
    assert not base[found.labels].any()
    assert torch.all(found.scores[:-1] >= found.scores[1:])
    rows = torch.cat([torch.zeros(len(found), 1), found.boxes], 1)
    expected = teacher.encode_regions([image], rows, CROP)
    torch.testing.assert_close(found.embeddings, expected)
    probabilities = (teacher.logit_scale * expected @ text.T).softmax(-1)
    torch.testing.assert_close(found.confidence, probabilities.max(-1).values)
    torch.testing.assert_close(found.scores, entropy_score(probabilities), rtol=1e-4, atol=1e-4)
    # without the filters, some proposals sit on a base box or are named a base class
    loose = ProposalSettings(**{**SETTINGS.to_dict(), "base_iou": 1.0, "drop_base_class": False,
                                "pre_filter": len(anchors), "keep": len(anchors)})
    unfiltered = generate_proposals(teacher, image, text, base_boxes, base, loose)
    assert base[unfiltered.labels].any() and box_iou(unfiltered.boxes, base_boxes).max() >= SETTINGS.base_iou
    assert all(any(torch.equal(box, b) for b in unfiltered.boxes) for box in found.boxes)


def test_bad_proposal_settings_are_refused():
    for bad in (dict(stride=0), dict(sizes=()), dict(keep=5, pre_filter=2), dict(min_size=800, max_size=None),
                dict(nms_iou=0.0), dict(score_crop="big")):
        with pytest.raises(ConfigError):
            ProposalSettings(**bad)


def test_cache_stores_both_views_and_the_dataset_distils_them(teacher, datamodule, tmp_path):
    dataset = datamodule.train_dataset(augment=False, with_cache=False)
    folder = build_detection_cache(teacher, dataset, datamodule.class_names, datamodule.base_names,
                                   datamodule.annotation_file("train"), tmp_path / "cache", SETTINGS, views=2,
                                   shard_size=4, progress=False)
    assert verify_cache(folder) == (2, [])
    cache = DetectionCache(folder)
    cache.check(teacher, datamodule.annotation_file("train"), datamodule.class_names, datamodule.base_names,
                len(dataset))
    index = max(range(len(dataset)), key=lambda i: len(cache.targets(i).proposal_boxes))
    item = dataset.read(index)
    stored = cache.targets(index)
    assert len(stored.proposal_boxes) >= 3
    torch.testing.assert_close(stored.gt_boxes, item["target"]["boxes"])
    rows = torch.cat([torch.zeros(len(stored.gt_boxes), 1), stored.gt_boxes], 1)
    torch.testing.assert_close(stored.gt_embeddings, teacher.encode_regions([item["image"]], rows, CROP),
                               atol=2e-3, rtol=0)  # stored as float16
    mirrored = cache.targets(index, flipped=True)
    width = item["image"].shape[-1]
    flipped_rows = torch.cat([torch.zeros(len(stored.proposal_boxes), 1), width - stored.proposal_boxes[:, 2:3],
                              stored.proposal_boxes[:, 1:2], width - stored.proposal_boxes[:, 0:1],
                              stored.proposal_boxes[:, 3:4]], 1)
    expected = teacher.encode_regions([item["image"].flip(-1)], flipped_rows, CROP)
    torch.testing.assert_close(mirrored.proposal_embeddings, expected, atol=2e-3, rtol=0)
    assert not torch.allclose(mirrored.proposal_embeddings, stored.proposal_embeddings, atol=1e-2)
    # training items carry base boxes (weight 1) then proposals (confidence, mean 1), flipped with the image
    datamodule.attach_cache(folder)
    datamodule.proposals_per_image = 3
    train = datamodule.train_dataset()
    torch.manual_seed(0)
    items = [train[index] for _ in range(8)]
    for sample in items:
        distill = sample["distill"]
        gt = len(sample["target"]["boxes"])
        torch.testing.assert_close(distill["boxes"][:gt], sample["target"]["boxes"])
        assert torch.all(distill["weights"][:gt] == 1)
        proposals = distill["weights"][gt:]
        assert len(proposals) == 3
        assert proposals.mean().item() == pytest.approx(1.0, abs=1e-5)
    # a flipped item has the mirror view's embeddings and mirrored boxes, an unflipped one the original's
    views = []
    for sample in items:
        last = sample["distill"]["embeddings"][-1]
        views.append(bool(torch.equal(last, mirrored.proposal_embeddings[2])))
        assert views[-1] or torch.equal(last, stored.proposal_embeddings[2])
        box = stored.proposal_boxes[2]
        expected_box = torch.stack([width - box[2], box[1], width - box[0], box[3]]) if views[-1] else box
        torch.testing.assert_close(sample["distill"]["boxes"][-1], expected_box)
    assert set(views) == {True, False}  # 8 draws of a fair flip (seeded)
    datamodule.region_cache = None


def test_cache_refuses_other_data_and_an_unfinished_build(teacher, datamodule, tmp_path):
    dataset = datamodule.train_dataset(augment=False, with_cache=False)
    folder = build_detection_cache(teacher, dataset, datamodule.class_names, datamodule.base_names,
                                   datamodule.annotation_file("train"), tmp_path / "cache", SETTINGS, views=1,
                                   shard_size=4, progress=False)
    cache = DetectionCache(folder)
    with pytest.raises(ConfigError, match="other data"):
        cache.check(teacher, datamodule.annotation_file("train"), list(reversed(datamodule.class_names)),
                    datamodule.base_names, len(dataset))
    with pytest.raises(ConfigError, match="mirror"):
        cache.targets(0, flipped=True)
    other = ProposalSettings(**{**SETTINGS.to_dict(), "keep": 5})
    with pytest.raises(ConfigError, match="built otherwise"):
        build_detection_cache(teacher, dataset, datamodule.class_names, datamodule.base_names,
                              datamodule.annotation_file("train"), folder, other, views=1, shard_size=4,
                              progress=False)
    (folder / "index.json").unlink()
    (folder / "shard-00001.json").unlink()
    with pytest.raises(ConfigError, match="unfinished"):
        DetectionCache(folder)
    before = (folder / "shard-00000.safetensors").stat().st_mtime_ns
    build_detection_cache(teacher, dataset, datamodule.class_names, datamodule.base_names,
                          datamodule.annotation_file("train"), folder, SETTINGS, views=1, shard_size=4, progress=False)
    assert (folder / "shard-00000.safetensors").stat().st_mtime_ns == before  # finished shards are kept
    assert json.loads((folder / "index.json").read_text())["shards"][1]["samples"] == [4, 6]
