"""The two ways a run ends early that the entry points report as one `error:` line."""


class UsageError(Exception):
  """Bad input from the user: names the flag, config field or file, and what was expected.
  Entry points print it as `error: <message>` and exit with status 2 before anything is
  compiled or written."""


class RunStopped(Exception):
  """A run that cannot go on (e.g. a non-finite loss): one `error:` line, exit status 3."""
