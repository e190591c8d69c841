"""The one error every unreadable image file raises, and how file names are shown in it."""

import os
import stat


class ImageError(ValueError):
  """An image file that cannot be read; the message is one line naming the file."""


def shown(path: str | os.PathLike) -> str:
  """`path` as printable text: bytes of the name that are not UTF-8 appear as `\\xNN`."""
  return os.fsencode(path).decode("utf-8", "backslashreplace")


def fail(path: str | os.PathLike, problem: str) -> ImageError:
  """An `ImageError` whose one-line message is `<path>: <problem>`."""
  return ImageError(f"{shown(path)}: {' '.join(str(problem).split())}")


def kind_of(mode: int) -> str | None:
  """What a file of `st_mode` `mode` is when it is not a regular file ("a FIFO", ...), else
  None."""
  kinds = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a FIFO (named pipe)"),
           (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
           (stat.S_ISSOCK, "a socket"))
  return next((name for test, name in kinds if test(mode)), None if stat.S_ISREG(mode)
              else "not a regular file")
