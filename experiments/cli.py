"""Command-line plumbing shared by the entry points.

Bad input (an unknown flag or config field, an invalid value, a missing file) is reported as
one line on stderr, `error: <what is wrong>`, with exit code 2, before anything is compiled
or written. Entry points raise `UsageError` for such problems and start with `cli.run(main)`.
A run that has to stop midway (`RunStopped`) is reported the same way with exit status 3.
"""
import logging as std_logging
import sys

from absl import app
from absl import flags
from absl import logging

# Libraries whose INFO lines (per-save orbax chatter, backend probing) drown the run's own log;
# their warnings and errors still show, and --verbosity=1 shows everything.
_QUIET_LIBRARIES = ("/orbax/", "/grain/", "/jax/_src/", "/etils/")


class UsageError(Exception):
  """Bad input from the user: names the flag, config field or file, and what was expected."""


class RunStopped(Exception):
  """A run that cannot go on (e.g. a non-finite loss): one `error:` line, exit status 3."""


def fail(message: str, status: int = 2) -> None:
  """Prints `error: message` on one line and exits with `status`."""
  print(f"error: {' '.join(str(message).split())}", file=sys.stderr, flush=True)
  sys.exit(status)


def _parse_flags(argv):
  try:
    return flags.FLAGS(argv)
  except (flags.Error, ValueError, KeyError, AttributeError, TypeError, OSError) as e:
    # Config files are loaded during flag parsing; their errors arrive here too.
    fail(_describe(e, argv))


def _config_load_error(e: BaseException) -> str | None:
  """ml_collections defers a config file's load error to the first use of the config."""
  if isinstance(e, OSError) and "earlier failure to load" in str(e) and e.__cause__ is not None:
    return f"--config: {e.__cause__}"
  return None


def _describe(e: BaseException, argv) -> str:
  """The message of a flag-parsing error, without any traceback text embedded in it."""
  if _config_load_error(e) is not None:
    return _config_load_error(e)
  missing = e if isinstance(e, KeyError) else e.__context__
  if isinstance(e, (KeyError, AttributeError)) and isinstance(missing, KeyError):
    # ml_collections: a --config.A.B=V override names a field the config does not have.
    name = str(missing.args[0]).strip("'\"")
    flag = next((a.split("=")[0] for a in argv
                 if a.startswith("--config.") and a.split("=")[0].endswith(f".{name}")),
                f"--config...{name}")
    return f"{flag}: the config has no field {name!r}"
  text = str(e).strip()
  if "Traceback (most recent call last)" in text:
    # ml_collections embeds the config file's traceback: keep what precedes it and the
    # exception's own last line.
    head = text.split("Traceback (most recent call last)")[0].rstrip(": \n")
    last = [line for line in text.splitlines() if line.strip()][-1].strip()
    text = f"{head}: {last}"
  return text


class _QuietLibraries(std_logging.Filter):

  def filter(self, record):
    if record.levelno > std_logging.INFO or logging.get_verbosity() > logging.INFO:
      return True
    return not any(lib in record.pathname for lib in _QUIET_LIBRARIES)


def run(main) -> None:
  """`absl.app.run(main)` with one-line errors for flags and for `UsageError` raised by main."""

  def guarded_main(argv):
    logging.get_absl_handler().addFilter(_QuietLibraries())
    try:
      return main(argv)
    except UsageError as e:
      fail(str(e))
    except RunStopped as e:
      fail(str(e), status=3)
    except OSError as e:
      if _config_load_error(e) is None:
        raise
      fail(_config_load_error(e))

  app.run(guarded_main, flags_parser=_parse_flags)
