"""Labelled classification data for the benchmarks; nothing is downloaded.

Sources:
* scikit-learn's bundled 8x8 handwritten digits (`load_digits`);
* MNIST-1D-style signals generated on the fly (`make_mnist1d`, see `mnist1d.py`);
* Fashion-MNIST from the Debian package `dataset-fashion-mnist`
  (`/usr/share/datasets/fashion-mnist`, `load_fashion_mnist`);
* any MNIST-family idx files in a local folder (`load_idx_folder`: MNIST, KMNIST, EMNIST);
* CIFAR-10 / CIFAR-100 python pickles in a local folder (`load_cifar`);
* a local `.npz` file or in-memory arrays (`load_npz`, `from_arrays`).

Every loader returns a `ClassificationData` whose inputs are float32, flattened to
(N, prod(input_shape)) and scaled to roughly unit range; `input_shape` keeps the layout
(images are height x width x channels).
"""
import dataclasses
import gzip
import os
import pickle

import numpy as np

from cl_methods import mnist1d

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
FASHION_MNIST_HINT = "apt-get install -y dataset-fashion-mnist"


@dataclasses.dataclass(frozen=True)
class ClassificationData:
  """Train and test splits of one labelled dataset, inputs flattened."""
  name: str
  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  input_shape: tuple

  @property
  def n_classes(self) -> int:
    return int(max(self.y_train.max(), self.y_test.max())) + 1

  @property
  def is_image(self) -> bool:
    return len(self.input_shape) == 3


def from_arrays(x_train, y_train, x_test=None, y_test=None, *, name="arrays",
                test_fraction=0.2, seed=0) -> ClassificationData:
  """Wraps in-memory arrays; without a test split, a stratified one is drawn.

  Inputs of shape (N, H, W) or (N, H, W, C) are treated as images, (N, D) as vectors.
  """
  x_train = np.asarray(x_train)
  y_train = np.asarray(y_train)
  if x_train.ndim < 2 or x_train.shape[0] != y_train.shape[0] or y_train.ndim != 1:
    raise ValueError(f"{name}: need x of shape (N, ...) and y of shape (N,), got "
                     f"{x_train.shape} and {y_train.shape}")
  if np.any(y_train < 0) or not np.issubdtype(y_train.dtype, np.integer):
    raise ValueError(f"{name}: labels must be non-negative integers")
  if x_test is None:
    x_train, y_train, x_test, y_test = _stratified_split(x_train, y_train, test_fraction, seed)
  x_test, y_test = np.asarray(x_test), np.asarray(y_test)
  if x_test.shape[1:] != x_train.shape[1:] or x_test.shape[0] != y_test.shape[0]:
    raise ValueError(f"{name}: test arrays {x_test.shape}, {y_test.shape} do not match the "
                     f"training inputs {x_train.shape}")
  shape = x_train.shape[1:]
  if len(shape) == 2:
    shape = shape + (1,)
  return ClassificationData(
      name=name,
      x_train=x_train.reshape(len(x_train), -1).astype(np.float32),
      y_train=y_train.astype(np.int32),
      x_test=x_test.reshape(len(x_test), -1).astype(np.float32),
      y_test=y_test.astype(np.int32),
      input_shape=tuple(int(s) for s in shape))


def _stratified_split(x, y, test_fraction, seed):
  if not 0.0 < test_fraction < 1.0:
    raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction}")
  rng = np.random.default_rng(seed)
  test = np.zeros(len(y), dtype=bool)
  for label in np.unique(y):
    members = rng.permutation(np.flatnonzero(y == label))
    test[members[: max(1, int(round(test_fraction * len(members))))]] = True
  return x[~test], y[~test], x[test], y[test]


def load_digits(*, test_fraction=0.2, seed=0) -> ClassificationData:
  """scikit-learn's 1797 8x8 digits (UCI), pixel values scaled from [0, 16] to [0, 1]."""
  from sklearn import datasets as sk_datasets
  bunch = sk_datasets.load_digits()
  images = bunch.images.astype(np.float32) / 16.0
  return from_arrays(images, bunch.target, name="digits", test_fraction=test_fraction,
                     seed=seed)


def make_mnist1d(*, num_examples=4000, test_fraction=0.2, seed=0) -> ClassificationData:
  """MNIST-1D-style signals (length 40, 10 classes), generated deterministically from seed."""
  x, y = mnist1d.generate(num_examples, seed)
  return from_arrays(x, y, name="mnist1d", test_fraction=test_fraction, seed=seed)


def read_idx(path: str) -> np.ndarray:
  """Reads one idx file (LeCun's MNIST format), gzipped or raw.

  Layout: two zero bytes, a type code (0x08 = uint8), the number of dimensions, each
  dimension as a big-endian int32, then the data in C order.
  """
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    raw = f.read()
  if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
    raise ValueError(f"{path}: not an idx file (bad magic number)")
  dtypes = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
  if raw[2] not in dtypes:
    raise ValueError(f"{path}: unknown idx data type code {raw[2]:#x}")
  ndim = raw[3]
  dims = np.frombuffer(raw, dtype=">i4", count=ndim, offset=4)
  data = np.frombuffer(raw, dtype=dtypes[raw[2]], offset=4 + 4 * ndim)
  if data.size != int(np.prod(dims)):
    raise ValueError(f"{path}: header says {tuple(dims)} but holds {data.size} values")
  return data.reshape(tuple(int(d) for d in dims))


def _find_idx(folder, split, kind):
  """Finds e.g. train-images-idx3-ubyte(.gz) or emnist-letters-train-images-idx3-ubyte."""
  markers = {"train": ("train",), "test": ("t10k", "test")}[split]
  tag = {"images": "idx3", "labels": "idx1"}[kind]
  for name in sorted(os.listdir(folder)):
    if tag in name and kind in name and any(m in name for m in markers):
      return os.path.join(folder, name)
  raise FileNotFoundError(f"no {split} {kind} idx file ({tag}) in {folder}")


def load_idx_folder(folder: str, *, name="idx") -> ClassificationData:
  """MNIST-family idx files (MNIST, Fashion-MNIST, KMNIST, EMNIST) from a local folder."""
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"{name}: folder {folder!r} does not exist")
  arrays = {(s, k): read_idx(_find_idx(folder, s, k))
            for s in ("train", "test") for k in ("images", "labels")}
  return from_arrays(arrays["train", "images"].astype(np.float32) / 255.0,
                     arrays["train", "labels"].astype(np.int64),
                     arrays["test", "images"].astype(np.float32) / 255.0,
                     arrays["test", "labels"].astype(np.int64), name=name)


def load_fashion_mnist(folder: str = "") -> ClassificationData:
  """Fashion-MNIST (60k/10k, 28x28), by default from the Debian package's folder."""
  folder = folder or FASHION_MNIST_DIR
  if not os.path.isdir(folder):
    raise FileNotFoundError(
        f"Fashion-MNIST not found at {folder}: install the Debian package "
        f"({FASHION_MNIST_HINT}) or point data_dir at a folder of its idx files")
  return load_idx_folder(folder, name="fashion_mnist")


def _unpickle(path):
  with open(path, "rb") as f:
    return pickle.load(f, encoding="bytes")


def load_cifar(folder: str, *, n_classes: int = 10) -> ClassificationData:
  """CIFAR-10 (`cifar-10-batches-py`) or CIFAR-100 (`cifar-100-python`, fine labels) pickles.

  `folder` may be the extracted folder itself or its parent.
  """
  sub = {10: "cifar-10-batches-py", 100: "cifar-100-python"}[n_classes]
  if os.path.isdir(os.path.join(folder, sub)):
    folder = os.path.join(folder, sub)
  if n_classes == 10:
    train_files = [os.path.join(folder, f"data_batch_{i}") for i in range(1, 6)]
    test_files, label_key = [os.path.join(folder, "test_batch")], b"labels"
  else:
    train_files, test_files = [os.path.join(folder, "train")], [os.path.join(folder, "test")]
    label_key = b"fine_labels"
  missing = [f for f in train_files + test_files if not os.path.isfile(f)]
  if missing:
    raise FileNotFoundError(f"cifar{n_classes}: missing {missing[0]} (expected the python "
                            f"pickles of {sub} in {folder!r})")

  def read(files):
    parts = [_unpickle(f) for f in files]
    x = np.concatenate([p[b"data"] for p in parts]).reshape(-1, 3, 32, 32)
    y = np.concatenate([np.asarray(p[label_key]) for p in parts])
    return x.transpose(0, 2, 3, 1).astype(np.float32) / 255.0, y.astype(np.int64)

  (x_train, y_train), (x_test, y_test) = read(train_files), read(test_files)
  return from_arrays(x_train, y_train, x_test, y_test, name=f"cifar{n_classes}")


def load_npz(path: str, *, test_fraction=0.2, seed=0) -> ClassificationData:
  """A local .npz with arrays x_train, y_train and optionally x_test, y_test."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"npz: file {path!r} does not exist")
  with np.load(path) as f:
    keys = set(f.files)
    if not {"x_train", "y_train"} <= keys:
      raise ValueError(f"npz: {path} must hold x_train and y_train (has {sorted(keys)})")
    has_test = {"x_test", "y_test"} <= keys
    return from_arrays(f["x_train"], f["y_train"], f["x_test"] if has_test else None,
                       f["y_test"] if has_test else None, name="npz",
                       test_fraction=test_fraction, seed=seed)


DATASETS = ("digits", "mnist1d", "fashion_mnist", "idx", "cifar10", "cifar100", "npz")
NEEDS_DATA_DIR = ("idx", "cifar10", "cifar100", "npz")


def load(name: str, *, data_dir: str = "", test_fraction: float = 0.2, seed: int = 0,
         mnist1d_examples: int = 4000) -> ClassificationData:
  """Loads a dataset by name (one of DATASETS)."""
  if name == "digits":
    return load_digits(test_fraction=test_fraction, seed=seed)
  if name == "mnist1d":
    return make_mnist1d(num_examples=mnist1d_examples, test_fraction=test_fraction, seed=seed)
  if name == "fashion_mnist":
    return load_fashion_mnist(data_dir)
  if name in NEEDS_DATA_DIR and not data_dir:
    raise FileNotFoundError(f"dataset {name!r} is read from a local path: set data_dir")
  if name == "idx":
    return load_idx_folder(data_dir)
  if name in ("cifar10", "cifar100"):
    return load_cifar(data_dir, n_classes=int(name[len("cifar"):]))
  if name == "npz":
    return load_npz(data_dir, test_fraction=test_fraction, seed=seed)
  raise ValueError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
