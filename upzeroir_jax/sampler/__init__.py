"""sampler sub-package."""
