from .masks import boundary_cells, cell_boxes, overlay_mask

__all__ = ['boundary_cells', 'cell_boxes', 'overlay_mask']
