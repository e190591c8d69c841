"""PyTorch checkpoint converters."""
