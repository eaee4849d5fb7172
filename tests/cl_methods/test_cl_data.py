"""Datasets, MNIST-1D generator, context sequences, streams, scenario layouts, batches."""
import functools
import gzip
import pickle

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from cl_methods import batch as batch_lib
from cl_methods import datasets
from cl_methods import mnist1d
from cl_methods import scenarios
from cl_methods import streams


@pytest.fixture(scope="module")
def digits():
  return datasets.load_digits()


def test_digits_shapes_and_split(digits):
  assert digits.input_shape == (8, 8, 1) and digits.n_classes == 10
  assert digits.x_train.shape[1] == 64 and len(digits.x_train) + len(digits.x_test) == 1797
  assert 0.0 <= digits.x_train.min() and digits.x_train.max() <= 1.0
  # Stratified: every class in both splits, about 20% held out.
  assert set(np.unique(digits.y_test)) == set(range(10))
  assert abs(len(digits.x_test) / 1797 - 0.2) < 0.01


def test_mnist1d_is_deterministic_balanced_and_learnable():
  x, y = mnist1d.generate(600, seed=3)
  x2, y2 = mnist1d.generate(600, seed=3)
  np.testing.assert_array_equal(x, x2)
  np.testing.assert_array_equal(y, y2)
  assert x.shape == (600, 40) and np.bincount(y).tolist() == [60] * 10
  assert not np.array_equal(x, mnist1d.generate(600, seed=4)[0])
  # Transformations make raw nearest-centroid classification imperfect but above chance.
  centroids = np.stack([x[y == c].mean(0) for c in range(10)])
  pred = np.argmin(((x[:, None] - centroids[None]) ** 2).sum(-1), 1)
  assert 0.15 < (pred == y).mean() < 0.9


def _write_idx(path, array):
  header = bytes([0, 0, 0x08, array.ndim]) + b"".join(
      int(d).to_bytes(4, "big") for d in array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def test_idx_folder_round_trip(tmp_path):
  rng = np.random.default_rng(0)
  imgs = rng.integers(0, 256, (12, 5, 5))
  labels = np.arange(12) % 3
  _write_idx(tmp_path / "train-images-idx3-ubyte.gz", imgs)
  _write_idx(tmp_path / "train-labels-idx1-ubyte.gz", labels)
  _write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", imgs[:6])
  _write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", labels[:6])
  data = datasets.load("idx", data_dir=str(tmp_path))
  assert data.input_shape == (5, 5, 1) and data.n_classes == 3
  np.testing.assert_allclose(data.x_train, imgs.reshape(12, -1) / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(data.y_test, labels[:6])


def test_cifar10_pickles(tmp_path):
  folder = tmp_path / "cifar-10-batches-py"
  folder.mkdir()
  rng = np.random.default_rng(0)
  for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
    with open(folder / name, "wb") as f:
      pickle.dump({b"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8),
                   b"labels": [0, 1, 2, 3]}, f)
  data = datasets.load("cifar10", data_dir=str(tmp_path))
  assert data.input_shape == (32, 32, 3) and data.x_train.shape == (20, 3072)
  with open(folder / "test_batch", "rb") as f:
    raw = pickle.load(f)[b"data"][0]
  # Stored channel-first; loaded as height x width x channels.
  np.testing.assert_allclose(data.x_test[0].reshape(32, 32, 3)[:, :, 1],
                             raw.reshape(3, 32, 32)[1] / 255.0, rtol=1e-6)


def test_npz_and_arrays(tmp_path):
  x = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
  y = np.arange(50) % 5
  np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
  data = datasets.load("npz", data_dir=str(tmp_path / "d.npz"))
  assert data.input_shape == (6,) and len(data.y_train) + len(data.y_test) == 50
  with pytest.raises(ValueError, match="labels"):
    datasets.from_arrays(x, -y)


def test_fashion_mnist_from_debian_package():
  """CI installs `dataset-fashion-mnist`; absent, the error names the package."""
  with pytest.raises(FileNotFoundError, match="apt-get install -y dataset-fashion-mnist"):
    datasets.load_fashion_mnist("/nonexistent/fashion")
  data = datasets.load_fashion_mnist()
  assert data.input_shape == (28, 28, 1)
  assert data.x_train.shape == (60000, 784) and data.x_test.shape == (10000, 784)
  assert np.bincount(data.y_test).tolist() == [1000] * 10


def test_split_contexts_partition_the_classes(digits):
  ctx = streams.split_contexts(digits, 5, seed=1)
  assert ctx.classes.shape == (5, 2) and ctx.disjoint_classes
  assert sorted(ctx.classes.ravel().tolist()) == list(range(10))
  for c in range(5):
    assert set(digits.y_train[ctx.train_members[c]]) == set(ctx.classes[c])
  with pytest.raises(ValueError, match="evenly"):
    streams.split_contexts(digits, 3)


def test_permuted_contexts_are_permutations(digits):
  ctx = streams.permuted_contexts(digits, 3, seed=0)
  assert not ctx.disjoint_classes and ctx.pixel_index.shape == (3, 64, 1)
  np.testing.assert_array_equal(ctx.pixel_index[0, :, 0], np.arange(64))
  for c in range(3):
    assert sorted(ctx.pixel_index[c, :, 0].tolist()) == list(range(64))
  assert not np.array_equal(ctx.pixel_index[1], ctx.pixel_index[2])


def test_rotation_table_rotates_an_image():
  index, weight = streams.rotation_table((4, 4, 1), 90.0)
  img = np.arange(16.0).reshape(4, 4)
  rotated = (img.ravel()[index] * weight).sum(-1).reshape(4, 4)
  np.testing.assert_allclose(rotated, np.rot90(img, k=-1), atol=1e-5)
  index0, weight0 = streams.rotation_table((4, 4, 1), 0.0)
  np.testing.assert_allclose((img.ravel()[index0] * weight0).sum(-1), img.ravel())
  with pytest.raises(ValueError, match="not images"):
    streams.rotated_contexts(datasets.make_mnist1d(num_examples=100), 2)


def test_context_probabilities_cross_fade():
  p = streams.context_probabilities(3, 100, 0.2)
  np.testing.assert_allclose(p.sum(1), 1.0)
  assert p[0, 0] == 1.0 and p[150, 1] == 1.0 and p[-1, 2] == 1.0
  # Half-way through the fade at the first boundary both contexts are equally likely.
  assert p[99, 0] == pytest.approx(0.5, abs=0.03) and p[99, 1] == pytest.approx(0.5, abs=0.03)
  assert np.all(np.diff(p[85:115, 1]) >= 0)
  sharp = streams.context_probabilities(3, 100, 0.0)
  assert sharp[99, 0] == 1.0 and sharp[100, 1] == 1.0


def test_streams_serve_the_right_contexts(digits):
  ctx = streams.split_contexts(digits, 5, seed=0)
  based = streams.task_based_stream(ctx, steps_per_context=10, batch_size=8,
                                    steps_per_chunk=5, seed=0)
  chunks = np.stack([based[i] for i in range(len(based))])       # (10, 5, 8, 2)
  assert chunks.shape == (10, 5, 8, 2)
  for c in range(5):
    part = chunks[2 * c: 2 * c + 2].reshape(-1, 2)
    assert (part[:, 1] == c).all()
    assert set(digits.y_train[part[:, 0]]) <= set(ctx.classes[c])
  # Within an epoch no example repeats.
  first = chunks[:2].reshape(-1, 2)[:, 0]
  assert len(set(first.tolist())) == len(first)
  mixed = streams.interleaved_stream(ctx, total_steps=10, batch_size=32, steps_per_chunk=10)
  assert len(set(mixed[0][..., 1].ravel().tolist())) == 5
  free = streams.task_free_stream(ctx, steps_per_context=10, batch_size=8, steps_per_chunk=5,
                                  boundary_width=1.0)
  contexts_seen = np.stack([free[i] for i in range(len(free))])[..., 1].reshape(50, 8)
  assert (contexts_seen[0] == 0).all() and (contexts_seen[-1] == 4).all()
  assert len(set(contexts_seen[8:12].ravel().tolist())) == 2    # blurred boundary


def test_layouts_of_the_three_scenarios(digits):
  split = streams.split_contexts(digits, 5, seed=0)
  task = scenarios.output_layout(split, "task")
  assert task.n_units == 10 and task.train_mask.sum(1).tolist() == [2] * 5
  np.testing.assert_array_equal(task.context_units, split.classes)
  domain = scenarios.output_layout(split, "domain")
  assert domain.n_units == 2 and domain.train_mask.all()
  np.testing.assert_array_equal(domain.context_units, np.tile([0, 1], (5, 1)))
  klass = scenarios.output_layout(split, "class")
  assert klass.n_units == 10 and klass.test_mask.all()
  perm = streams.permuted_contexts(digits, 3)
  assert scenarios.output_layout(perm, "class").n_units == 30
  shared = scenarios.output_layout(perm, "task")
  assert shared.n_units == 10 and shared.train_mask.all()
  heads = scenarios.output_layout(perm, "task", separate_heads=True)
  assert heads.n_units == 30 and heads.unit_of_label[2, 7] == 27
  assert heads.train_mask[1].nonzero()[0].tolist() == list(range(10, 20))
  with pytest.raises(ValueError, match="Task-IL only"):
    scenarios.output_layout(perm, "class", separate_heads=True)


def test_gather_applies_context_transform_and_layout(digits):
  perm = streams.permuted_contexts(digits, 3, seed=0)
  layout = scenarios.output_layout(perm, "class")
  arrays = batch_lib.to_device(perm, layout)
  idx = jnp.array([0, 1, 2])
  ctx = jnp.array([0, 1, 2])
  gather = jax.jit(functools.partial(batch_lib.gather, split="test", input_shape=(8, 8, 1),
                                     transform=True))
  b = gather(arrays, idx, ctx)
  assert b.x.shape == (3, 8, 8, 1) and b.mask.shape == (3, 30)
  for i in range(3):
    expected = digits.x_test[i][perm.pixel_index[i, :, 0]]
    np.testing.assert_allclose(np.asarray(b.x[i]).ravel(), expected)
    assert int(b.y[i]) == i * 10 + digits.y_test[i]
  idx_pad, valid = batch_lib.padded_members(np.arange(5), 8, np.random.default_rng(0))
  assert valid.tolist() == [True] * 5 + [False] * 3 and idx_pad[:5].tolist() == list(range(5))
