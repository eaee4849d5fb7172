"""absl logging for the commands, without the libraries' INFO chatter."""
import logging as std_logging

from absl import flags
from absl import logging

# Libraries whose INFO lines (per-save orbax chatter, backend probing) drown the run's own log;
# their warnings and errors still show, and --verbosity=1 shows everything.
_QUIET_LIBRARIES = ("/orbax/", "/grain/", "/jax/_src/", "/etils/")


def quiet_logging(verbosity: int | None = None) -> None:
  """absl's log handler, without the libraries' INFO chatter (at INFO verbosity). A worker
  process of a command, which parses no flags, passes the command's verbosity."""
  logging.use_absl_handler()
  logging.get_absl_handler().addFilter(_QuietLibraries())
  if verbosity is not None:
    flags.FLAGS.mark_as_parsed()
    logging.set_verbosity(verbosity)


class _QuietLibraries(std_logging.Filter):

  def filter(self, record):
    if record.levelno > std_logging.INFO or logging.get_verbosity() > logging.INFO:
      return True
    return not any(lib in record.pathname for lib in _QUIET_LIBRARIES)
