"""The one teacher interface: identity by weights, zero-shot logits, and image regions by a crop rule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from vlkd import create_teacher
from vlkd.data.transforms import eval_transform
from vlkd.errors import ConfigError
from vlkd.teacher import RegionCrop, Teacher, TeacherIdentity
from vlkd.teacher.protocol import check_same_teacher, weights_sha256
from vlkd.teacher.regions import crop_regions

from .conftest import TINY


def test_the_in_process_teacher_is_a_teacher(tiny_teacher):
    assert isinstance(tiny_teacher, Teacher)
    identity = tiny_teacher.identity
    assert (identity.model, identity.pretrained, identity.embed_dim, identity.image_size) == (
        TINY, None, tiny_teacher.embed_dim, 64)
    assert TeacherIdentity.from_dict(identity.to_dict()) == identity


def test_identity_follows_the_weights_not_the_file(tmp_path, tiny_teacher):
    """The same weights read from a file hash the same; one changed number hashes differently."""
    state = tiny_teacher.adapter.model.state_dict()
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "tiny.safetensors")
    loaded = create_teacher(TINY, pretrained=str(tmp_path / "tiny.safetensors"))
    assert loaded.identity.weights_sha256 == tiny_teacher.identity.weights_sha256
    # A tag or file name alone names no other weights: the same weights under another tag are the same teacher.
    retagged = TeacherIdentity(**{**tiny_teacher.identity.to_dict(), "pretrained": "/elsewhere/tiny.pt"})
    assert tiny_teacher.identity.differences(retagged) == []
    with torch.no_grad():
        loaded.adapter.model.visual.proj[0, 0] += 1e-3
    changed = weights_sha256(loaded.adapter)
    assert changed != tiny_teacher.identity.weights_sha256
    other = TeacherIdentity(**{**tiny_teacher.identity.to_dict(), "weights_sha256": changed})
    with pytest.raises(ConfigError, match="weights_sha256") as error:
        check_same_teacher(tiny_teacher.identity, other, "the server", "start it with the run's teacher")
    assert "start it with the run's teacher" in str(error.value)


def test_zero_shot_logits_are_scaled_cosines(tiny_teacher):
    images = torch.rand(3, 3, 64, 64)
    names = ["running", "jumping"]
    expected = tiny_teacher.logit_scale * tiny_teacher.encode_images(images) @ tiny_teacher.encode_text(names).T
    torch.testing.assert_close(tiny_teacher.zero_shot_logits(images, names), expected)


def _image(height: int, width: int) -> torch.Tensor:
    """Pixel (y, x) of channel 0 holds y * 1000 + x, so a crop tells where it came from."""
    ys, xs = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    return torch.stack([ys * 1000.0 + xs, torch.zeros(height, width), torch.ones(height, width)])


def test_a_plain_crop_is_the_box():
    (crop,) = crop_regions([_image(50, 80)], torch.tensor([[0, 10, 20, 30, 25]]))
    assert crop.shape == (3, 5, 20)
    assert crop[0, 0, 0] == 20 * 1000 + 10 and crop[0, -1, -1] == 24 * 1000 + 29


def test_enlarging_widening_clipping_and_square_padding():
    image = _image(50, 80)
    # 1.2 x a 20 x 10 box centred at (20, 25): 24 x 12, i.e. x 8..32, y 19..31.
    (enlarged,) = crop_regions([image], torch.tensor([[0, 10, 20, 30, 30]]), RegionCrop(enlarge=1.2))
    assert enlarged.shape == (3, 12, 24) and enlarged[0, 0, 0] == 19 * 1000 + 8
    # A 2 x 2 box widened to 10 a side about its centre (41, 26): x 36..46, y 21..31.
    (widened,) = crop_regions([image], torch.tensor([[0, 40, 25, 42, 27]]), RegionCrop(min_size=10))
    assert widened.shape == (3, 10, 10) and widened[0, 0, 0] == 21 * 1000 + 36
    # At the corner: clipped to the image, then extended inwards to keep 10 pixels a side.
    (corner,) = crop_regions([image], torch.tensor([[0, 0, 0, 3, 3]]), RegionCrop(enlarge=1.2, min_size=10))
    assert corner.shape == (3, 10, 10) and corner[0, 0, 0] == 0
    # A wide box padded with zeros to a centred square: 6 rows above and 6 below the 8 kept.
    (square,) = crop_regions([image], torch.tensor([[0, 0, 0, 20, 8]]), RegionCrop(square=True))
    assert square.shape == (3, 20, 20)
    assert square[2, :6].abs().sum() == 0 and square[2, 14:].abs().sum() == 0 and (square[2, 6:14] == 1).all()


@pytest.mark.parametrize("box, word", [
    ([0, 5, 5, 5, 9], "empty"), ([1, 0, 0, 4, 4], "image 1"), ([0, 90, 0, 99, 9], "outside"),
    ([0, float("nan"), 0, 4, 4], "finite"), ([0.5, 0, 0, 4, 4], "image 0.5"),
])
def test_bad_boxes_are_named(box, word):
    with pytest.raises(ConfigError, match=word.replace(".", r"\.")):
        crop_regions([_image(20, 30)], torch.tensor([box]))
    with pytest.raises(ConfigError, match="enlarge"):
        RegionCrop(enlarge=0)


def test_region_embeddings_are_the_embeddings_of_the_crops(tiny_teacher):
    images = [torch.rand(3, 70, 90), torch.rand(3, 64, 64)]
    boxes = torch.tensor([[0, 5, 5, 60, 40], [1, 0, 10, 30, 64]], dtype=torch.float64)
    rule = RegionCrop(enlarge=1.2, min_size=10, square=True)
    crops = crop_regions(images, boxes, rule)
    expected = torch.cat([tiny_teacher.encode_images(eval_transform(c, 64, mode="bicubic")[None]) for c in crops])
    torch.testing.assert_close(tiny_teacher.encode_regions(images, boxes, rule), expected)
    assert F.cosine_similarity(expected[0], expected[1], dim=0) < 0.9999  # two different regions
