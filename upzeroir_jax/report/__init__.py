"""HTML reports of run folders (docs/evaluation.md, "Reports").

`write(folder)` reads only the folder's files (`records`: run.json, the images and their JSON
sidecars, scores.csv / scores.json) and writes `<folder>/report.html` (`page`) with SVG plots
of each image's sampling (`plots`). Nothing else in the package imports it: `python -m
eval.report` and `upzeroir restore --report` (which imports it only when the flag is given)
are its callers.
"""

from upzeroir_jax.report.page import REPORT, write

__all__ = ["REPORT", "write"]
