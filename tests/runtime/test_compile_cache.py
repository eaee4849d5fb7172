"""runtime.compile_cache: compiled programs saved in a folder and loaded from it."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from runtime import compile_cache

_HIT = "/jax/compilation_cache/cache_hits"


def _polynomial(x):
  return ((x * 3.0 + 1.0) * x).sum()


def test_a_compiled_program_is_loaded_from_the_folder_and_a_cut_entry_is_compiled_again(
    tmp_path):
  hits = []

  def listen(event, **_):
    if event == _HIT:
      hits.append(event)

  before = (jax.config.jax_compilation_cache_dir,
            jax.config.jax_persistent_cache_min_compile_time_secs)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0)  # save every program
  jax.monitoring.register_event_listener(listen)
  x = jnp.arange(6.0)
  try:
    with compile_cache.using(tmp_path):
      first = float(jax.jit(_polynomial)(x))
      saved = sorted(tmp_path.iterdir())
      assert saved and not hits
      jax.clear_caches()                   # this process forgets it: loaded from the folder
      assert float(jax.jit(_polynomial)(x)) == first and hits
      for entry in saved:                  # as a crash in the middle of a write leaves them
        entry.write_bytes(entry.read_bytes()[:20])
      jax.clear_caches()
      with pytest.warns(UserWarning, match="Error reading persistent compilation cache entry"):
        assert float(jax.jit(_polynomial)(x)) == first
    assert jax.config.jax_compilation_cache_dir == before[0]
    np.testing.assert_allclose(first, float(((x * 3.0 + 1.0) * x).sum()))
  finally:
    jax.monitoring.unregister_event_listener(listen)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", before[1])
    compile_cache.use(before[0])
