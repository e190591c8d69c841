"""Headless Chromium for the report tests, driven by selenium through chromedriver.

`browser()` yields a driver, or skips the test with the reason when selenium, Chromium or
chromedriver is missing (`.ci/run` installs Debian's `chromium` and `chromium-driver`). The
flags keep Chromium off the network and away from the user's profile: without them it stalls
on a machine with no network.
"""

import contextlib
import shutil
import tempfile
from collections.abc import Iterator

import pytest

FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars")
BINARIES = ("chromium", "chromium-browser", "google-chrome")


def _missing() -> str | None:
  """Why no browser can run here, or None."""
  try:
    import selenium  # noqa: F401
  except ImportError:
    return "selenium is not installed (pip install -e '.[test]')"
  if not any(shutil.which(b) for b in BINARIES):
    return "no Chromium installed (apt-get install -y chromium chromium-driver)"
  if not shutil.which("chromedriver"):
    return "no chromedriver installed (apt-get install -y chromium-driver)"
  return None


@contextlib.contextmanager
def browser(width: int = 1280, height: int = 900) -> Iterator:
  """A headless Chromium window of `width`×`height` CSS pixels with a new empty profile."""
  reason = _missing()
  if reason:
    pytest.skip(f"no browser for the report test: {reason}")
  from selenium import webdriver
  from selenium.webdriver.chrome.service import Service

  with tempfile.TemporaryDirectory() as profile:
    options = webdriver.ChromeOptions()
    options.binary_location = next(shutil.which(b) for b in BINARIES if shutil.which(b))
    for flag in (*FLAGS, f"--user-data-dir={profile}", f"--window-size={width},{height}"):
      options.add_argument(flag)
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    try:
      driver.set_page_load_timeout(60)
      yield driver
    finally:
      driver.quit()
