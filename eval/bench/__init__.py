"""The speed benchmark by concern: `options` (its flags), `setup` (models and inputs on the
device), `measure` (timings), `report` (ratios, targets, output); `eval/benchmark.py` drives."""
