"""Drawing down-sampling masks on images, and where object boundaries are."""
from typing import Tuple

import cv2
import numpy as np

# BGR colours of the overlay
DOWN_TINT = (160, 90, 40)  # down-sampled (OS16) cells: tinted blue
FULL_EDGE = (0, 165, 255)  # full-resolution (OS8) cells: orange outline


def cell_boxes(mask_shape: Tuple[int, int], image_shape: Tuple[int, int],
               scale: float = 1.0) -> Tuple[np.ndarray, np.ndarray]:
    """Pixel edges (rows, cols) of the cell grid on the image: cell (i, j)
    covers rows ``ys[i]:ys[i + 1]``. ``scale`` = image size / network input
    size (cells are 16 input pixels)."""
    h, w = mask_shape
    ys = np.minimum(np.round(np.arange(h + 1) * 16 * scale).astype(int),
                    image_shape[0])
    xs = np.minimum(np.round(np.arange(w + 1) * 16 * scale).astype(int),
                    image_shape[1])
    return ys, xs


def overlay_mask(image: np.ndarray, mask: np.ndarray, scale: float = 1.0,
                 alpha: float = 0.55) -> np.ndarray:
    """Draw a cell mask on a BGR image.

    Args:
        image (ndarray): (H, W, 3) uint8 BGR image.
        mask (ndarray): (h, w) cell mask, 1 = down-sampled (OS16).
        scale (float): image size / network input size. Default: 1.
        alpha (float): strength of the tint of down-sampled cells.
    Returns:
        ndarray: (H, W, 3) uint8: down-sampled cells tinted, full-resolution
        cells outlined, and the fraction kept at full resolution written in
        the corner.
    """
    out = image.astype(np.float32).copy()
    ys, xs = cell_boxes(mask.shape, image.shape[:2], scale)
    tint = np.array(DOWN_TINT, np.float32)
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            if ys[i] >= ys[i + 1] or xs[j] >= xs[j + 1]:
                continue
            box = out[ys[i]:ys[i + 1], xs[j]:xs[j + 1]]
            if mask[i, j] > 0.5:
                box[:] = (1 - alpha) * box + alpha * tint
    out = out.clip(0, 255).astype(np.uint8)
    for i in range(mask.shape[0]):
        for j in range(mask.shape[1]):
            if mask[i, j] <= 0.5 and ys[i] < ys[i + 1] and xs[j] < xs[j + 1]:
                cv2.rectangle(out, (int(xs[j]), int(ys[i])),
                              (int(xs[j + 1]) - 1, int(ys[i + 1]) - 1),
                              FULL_EDGE, 1)
    keep = 1 - float(mask.mean())
    cv2.putText(out, f'OS8 cells: {keep:.0%}', (4, 14),
                cv2.FONT_HERSHEY_SIMPLEX, 0.4, (255, 255, 255), 1,
                cv2.LINE_AA)
    return out


def boundary_cells(label: np.ndarray, cell: int = 16,
                   ignore_index: int = 255) -> np.ndarray:
    """(ceil(H / cell), ceil(W / cell)) bool: cells that contain a boundary
    between two valid classes of an (H, W) label map."""
    valid = label != ignore_index
    edge = np.zeros(label.shape, bool)
    for a, b, va, vb in ((label[1:], label[:-1], valid[1:], valid[:-1]),
                         (label[:, 1:], label[:, :-1], valid[:, 1:],
                          valid[:, :-1])):
        diff = (a != b) & va & vb
        if a.shape[0] != label.shape[0]:
            edge[1:] |= diff
            edge[:-1] |= diff
        else:
            edge[:, 1:] |= diff
            edge[:, :-1] |= diff
    H, W = label.shape
    h, w = -(-H // cell), -(-W // cell)
    padded = np.zeros((h * cell, w * cell), bool)
    padded[:H, :W] = edge
    return padded.reshape(h, cell, w, cell).any(axis=(1, 3))
