from .masks import (boundary_cells, cell_boxes, legend, mask_panel,
                    overlay_mask, palette_image)

__all__ = [
    'boundary_cells', 'cell_boxes', 'legend', 'mask_panel', 'overlay_mask',
    'palette_image'
]
