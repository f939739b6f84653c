"""Shared fixtures: small ImageFolder trees written to disk and a fast pretrained extractor."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mexp_lib.extractors import FeatureExtractor, build_extractor
from mexp_lib.runner import NOTEBOOKS, REPOSITORY, NotebookFailed, run_notebook

IMAGE_SIDE = 8


def _unique_image(serial: int, rng: np.random.Generator, channels: int) -> np.ndarray:
    """Return a random 8x8 uint8 image whose first two pixels encode `serial`."""
    image = rng.integers(0, 256, size=(IMAGE_SIDE, IMAGE_SIDE, channels), dtype=np.uint8)
    image[0, 0, 0] = serial % 256
    image[0, 1, 0] = serial // 256
    return image


@pytest.fixture
def write_image_folder() -> Callable[..., dict[str, dict[str, np.ndarray]]]:
    """Return a writer of ImageFolder trees ``<root>/<dataset>/<split>/<class>/<i>.png``.

    The writer takes root, dataset, a mapping split -> {class name: image count} and
    ``grayscale``. Every image in one call is unique (its first two pixels encode a
    serial number), so parts drawn from the tree can be checked for overlap by content.
    It returns, per split and class, the uint8 images written (N, 8, 8, C), in file order.
    """

    def write(root: Path, dataset: str, counts: dict[str, dict[str, int]], *,
              grayscale: bool = False, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
        rng = np.random.default_rng(seed)
        channels = 1 if grayscale else 3
        serial = 0
        written: dict[str, dict[str, np.ndarray]] = {}
        for split, per_class in counts.items():
            written[split] = {}
            for class_name, count in per_class.items():
                folder = Path(root) / dataset / split / class_name
                folder.mkdir(parents=True, exist_ok=True)
                images = []
                for i in range(count):
                    image = _unique_image(serial, rng, channels)
                    serial += 1
                    pixels = image[..., 0] if grayscale else image
                    # Zero-padded names keep file order equal to ImageFolder's sorted order.
                    Image.fromarray(pixels).save(folder / f"{i:04d}.png")
                    images.append(image)
                written[split][class_name] = np.stack(images)
        return written

    return write


@pytest.fixture
def row_keys() -> Callable[[np.ndarray], list[bytes]]:
    """Return a function mapping images (N, H, W, C) to one bytes key per image."""

    def keys(images: np.ndarray) -> list[bytes]:
        return [np.ascontiguousarray(image).tobytes() for image in images]

    return keys


@pytest.fixture(scope="session")
def lite0() -> FeatureExtractor:
    """EfficientNet-Lite0 with its packaged ImageNet weights at the smallest input size, 32 px."""
    return build_extractor("efficientnet_lite0", input_size=32)


@pytest.fixture
def count_forward_calls() -> Iterator[Callable[[FeatureExtractor], list[int]]]:
    """Return a function that counts the forward calls of an extractor until the test ends.

    It returns a one-element list whose value grows by one per forward call.
    """
    handles = []

    def attach(extractor: FeatureExtractor) -> list[int]:
        calls = [0]

        def hook(module, inputs, output) -> None:
            calls[0] += 1

        handles.append(extractor.register_forward_hook(hook))
        return calls

    yield attach
    for handle in handles:
        handle.remove()



@pytest.fixture(scope="session")
def smoke_build(tmp_path_factory) -> tuple[Path, dict[str, str | None]]:
    """Execute every existing notebook on the smoke profile once per test session.

    Notebooks run in the order A, B, C, D into one build folder, so later notebooks reuse
    the poisoning sets of earlier ones as in a real run. Returns the build folder and,
    per notebook tried, its error message or None when it finished.
    """
    build = tmp_path_factory.mktemp("notebooks") / "smoke"
    attempts: dict[str, str | None] = {}
    for notebook in NOTEBOOKS:
        if not (REPOSITORY / "notebooks" / f"{notebook}.py").exists():
            continue
        try:
            run_notebook(notebook, profile="smoke", build_dir=build)
            attempts[notebook] = None
        except (NotebookFailed, FileNotFoundError) as error:
            attempts[notebook] = str(error)
    return build, attempts


@pytest.fixture(scope="session")
def smoke_notebook(smoke_build) -> Callable[[str], tuple[Path, Path]]:
    """Return a function mapping a notebook name to (build folder, executed notebook).

    The function fails the calling test with the notebook's error when it did not finish.
    """

    def executed(notebook: str) -> tuple[Path, Path]:
        build, attempts = smoke_build
        error = attempts.get(notebook, "was not run")
        if error is not None:
            pytest.fail(f"{notebook} on the smoke profile: {error}")
        return build, build / f"{notebook}.ipynb"

    return executed
