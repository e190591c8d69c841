"""metrics sub-package."""
