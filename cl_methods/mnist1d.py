"""A procedural 1-D classification dataset in the spirit of MNIST-1D (Greydanus 2020).

MNIST-1D ("Scaling down deep learning", arXiv:2011.14439, sec. 2) builds each example from
one of ten short template signals and a chain of random transformations, so that the
classes are easy to tell apart for a model that is invariant to them and hard otherwise.
This generator follows that recipe with its own templates and its own sampling code:

1. a template (12 points, one per class) is placed at a random offset inside a zero signal
   of random length (padding);
2. the padded signal is rolled circularly by a random shift (translation);
3. it is stretched horizontally about its centre by a random factor (scaling);
4. it is read out at a fixed number of points by linear interpolation;
5. a random linear ramp is added (shear), then correlated noise (white noise smoothed with a
   Gaussian kernel) and i.i.d. noise.

Steps 1-4 compose into one coordinate map per example, so the whole dataset is generated
with vectorised numpy (no loop over examples).
"""
import numpy as np
from scipy import ndimage

TEMPLATE_LENGTH = 12

# Ten hand-made template signals (our own shapes, not the published ones): bump, spike,
# double spike, rising ramp, falling ramp, step up, step down, dip, oscillation, spike-dip.
_T = np.linspace(0.0, 1.0, TEMPLATE_LENGTH)
TEMPLATES = np.stack([
    np.exp(-((_T - 0.5) ** 2) / 0.04),
    np.where(np.abs(_T - 0.5) < 0.05, 1.5, 0.0),
    np.where(np.abs(_T - 0.25) < 0.05, 1.2, 0.0) + np.where(np.abs(_T - 0.75) < 0.05, 1.2, 0.0),
    _T * 1.5,
    (1.0 - _T) * 1.5,
    np.where(_T > 0.5, 1.0, 0.0),
    np.where(_T < 0.5, 1.0, 0.0),
    -np.exp(-((_T - 0.5) ** 2) / 0.04),
    np.sin(2.0 * np.pi * 2.0 * _T),
    np.where(np.abs(_T - 0.3) < 0.05, 1.2, 0.0) - np.where(np.abs(_T - 0.7) < 0.05, 1.2, 0.0),
]).astype(np.float64)


def generate(num_examples: int, seed: int, *, length: int = 40, padding=(36, 60),
             max_translation: int = 48, scale_range: float = 0.4, shear_scale: float = 0.75,
             corr_noise_scale: float = 0.25, corr_noise_width: float = 2.0,
             iid_noise_scale: float = 0.02):
  """Generates `num_examples` labelled signals, classes balanced and shuffled.

  Returns:
    (x, y): float32 array (num_examples, length) and int32 labels in [0, 10).
  """
  if num_examples < 1:
    raise ValueError(f"num_examples must be >= 1, got {num_examples}")
  rng = np.random.default_rng(seed)
  n = num_examples
  y = rng.permutation(np.arange(n) % len(TEMPLATES)).astype(np.int32)

  padded_len = rng.integers(padding[0], padding[1] + 1, size=n).astype(np.float64)
  offset = np.floor(rng.random(n) * (padded_len - TEMPLATE_LENGTH + 1))
  shift = rng.integers(0, max_translation + 1, size=n).astype(np.float64)
  scale = 1.0 + scale_range * (2.0 * rng.random(n) - 1.0)

  # Output sample k sits at position p in the padded signal; undo scaling about the centre,
  # then the circular shift, then the padding offset, to find the template coordinate.
  p = np.linspace(0.0, 1.0, length)[None, :] * (padded_len[:, None] - 1.0)
  centre = (padded_len[:, None] - 1.0) / 2.0
  p = centre + (p - centre) / scale[:, None]
  p = np.mod(p - shift[:, None], padded_len[:, None])
  q = p - offset[:, None]
  inside = (q >= 0.0) & (q <= TEMPLATE_LENGTH - 1)
  q = np.clip(q, 0.0, TEMPLATE_LENGTH - 1)
  lo = np.floor(q).astype(np.int64)
  hi = np.minimum(lo + 1, TEMPLATE_LENGTH - 1)
  frac = q - lo
  tmpl = TEMPLATES[y]
  x = (1.0 - frac) * np.take_along_axis(tmpl, lo, 1) + frac * np.take_along_axis(tmpl, hi, 1)
  x = np.where(inside, x, 0.0)

  ramp = np.linspace(-1.0, 1.0, length)[None, :]
  x = x + shear_scale * (2.0 * rng.random(n)[:, None] - 1.0) * ramp
  smooth = ndimage.gaussian_filter1d(rng.standard_normal((n, length)), corr_noise_width,
                                     axis=1, mode="wrap")
  x = x + corr_noise_scale * smooth / smooth.std()
  x = x + iid_noise_scale * rng.standard_normal((n, length))
  return x.astype(np.float32), y
