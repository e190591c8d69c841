"""The one error every unreadable image file raises."""

import os


class ImageError(ValueError):
  """An image file that cannot be read; the message is one line naming the file."""


def fail(path: str | os.PathLike, problem: str) -> ImageError:
  """An `ImageError` whose one-line message is `<path>: <problem>`."""
  return ImageError(f"{os.fspath(path)}: {' '.join(str(problem).split())}")
