"""Evaluation binaries."""
