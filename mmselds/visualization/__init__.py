from .masks import (boundary_cells, cell_boxes, cell_values, legend,
                    mask_panel, overlay_mask, palette_image, result_cells)
from .overlays import write_mask_overlays
from .visualizer import SelDSLocalVisualizer

__all__ = [
    'boundary_cells', 'cell_boxes', 'cell_values', 'legend', 'mask_panel',
    'overlay_mask', 'palette_image', 'result_cells', 'write_mask_overlays',
    'SelDSLocalVisualizer'
]
