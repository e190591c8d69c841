"""Image files in and out, and the map between any image and the model's input grid.

`files` reads and writes images (`read_image`, `image_size`, `write_image`), `png` checks every
PNG and decodes 16-bit ones, `pixels` turns decoded samples into upright float RGB, `grid` maps
images onto the model grid and back (`upsample`: the guided transform of its "upsample"
mode), `atomic` writes files whole or not at all (images and JSON sidecars). The public
names are re-exported here.
"""

from upzeroir_jax.io.atomic import WriteError, write_json
from upzeroir_jax.io.errors import ImageError, kind_of, shown
from upzeroir_jax.io.files import IMAGE_SUFFIXES, image_size, read_image, write_image
from upzeroir_jax.io.grid import MODES as GRID_MODES
from upzeroir_jax.io.grid import SQUARE_MODES, GridMeta, from_model_grid, grid_shape, to_model_grid
from upzeroir_jax.io.pixels import orient

__all__ = ["GRID_MODES", "IMAGE_SUFFIXES", "SQUARE_MODES", "GridMeta", "ImageError",
           "WriteError", "from_model_grid", "grid_shape", "image_size", "kind_of", "orient",
           "read_image", "shown", "to_model_grid", "write_image", "write_json"]
