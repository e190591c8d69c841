"""The error of a run's inputs, weights or settings, shared by the CLI and the eval binaries."""


class RunError(ValueError):
  """A run's input, weights or settings cannot be used; the message is one line."""
