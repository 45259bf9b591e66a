"""Drawing down-sampling masks on images, and where object boundaries are."""
import math
from typing import Optional, Sequence, Tuple

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


def cell_values(mask: np.ndarray, scale: float = 1.0) -> np.ndarray:
    """The (h, w) cell mask of an (H, W) mask at the image's size (a
    result's ``ds_mask``): the value at each cell's centre, for the cells
    that show on the image (16 * ``scale`` image pixels each; ``scale`` =
    image size / network input size). Where slide windows or test-time
    augmentations disagreed the value is a fraction."""
    H, W = mask.shape
    side = 16 * scale
    h, w = (max(1, math.ceil(n / side - 1e-6)) for n in (H, W))
    ys = np.minimum(((np.arange(h) + 0.5) * side).astype(int), H - 1)
    xs = np.minimum(((np.arange(w) + 0.5) * side).astype(int), W - 1)
    return mask[np.ix_(ys, xs)]


def result_cells(result, image_height: int) -> Tuple[np.ndarray, float]:
    """The cell mask (:func:`cell_values`) of a selective segmentor's
    result (its ``ds_mask``) and the scale to draw it with on the image,
    ``image_height`` pixels high (the original image, or a drawing of it
    at that size)."""
    scale = image_height / result.img_shape[0]
    return cell_values(result.ds_mask.data[0].cpu().numpy(), scale), scale


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


def palette_image(label: np.ndarray, palette: Sequence) -> np.ndarray:
    """(H, W, 3) uint8 BGR colours of an (H, W) label map; ``palette``: RGB
    colour of each class (mmseg's ``dataset_meta['palette']``); other
    labels (e.g. 255) stay black."""
    colors = np.zeros(label.shape + (3, ), np.uint8)
    for cls, color in enumerate(palette):
        colors[label == cls] = tuple(color)[::-1]  # RGB -> BGR
    return colors


def legend(width: int, height: int = 22) -> np.ndarray:
    """A (height, width, 3) BGR strip explaining the overlay: a tinted
    swatch "down-sampled cell (OS16)" and an outlined one "full-resolution
    cell (OS8)" (one row each, 2 * height high, if one row is too narrow).
    """
    font, size = cv2.FONT_HERSHEY_SIMPLEX, 0.4
    side = height - 8
    items = [('down-sampled cell (OS16)', True),
             ('full-resolution cell (OS8)', False)]
    needed = sum(side + 18 + cv2.getTextSize(label, font, size, 1)[0][0]
                 for label, _ in items)
    rows = 1 if needed <= width else len(items)
    strip = np.full((height * rows, width, 3), 40, np.uint8)
    x, y = 4, 0
    for label, tinted in items:
        top = y + (height - side) // 2
        if tinted:
            box = strip[top:top + side, x:x + side]
            box[:] = (0.45 * box + 0.55 * np.array(DOWN_TINT)).astype(
                np.uint8)
        else:
            cv2.rectangle(strip, (x, top), (x + side - 1, top + side - 1),
                          FULL_EDGE, 1)
        cv2.putText(strip, label, (x + side + 4, y + height // 2 + 4), font,
                    size, (255, 255, 255), 1, cv2.LINE_AA)
        if rows == 1:
            x += side + 18 + cv2.getTextSize(label, font, size, 1)[0][0]
        else:
            y += height
    return strip


def mask_panel(image: np.ndarray, mask: np.ndarray, scale: float = 1.0,
               pred: Optional[np.ndarray] = None,
               min_height: int = 256) -> np.ndarray:
    """The mask figure: the image with the mask drawn on it
    (:func:`overlay_mask`), the prediction (BGR colours, e.g. from
    :func:`palette_image`) with the full-resolution cells outlined on its
    right, and a :func:`legend` below. Images lower than ``min_height``
    pixels are enlarged by an integer factor (nearest neighbour) first, so
    that small cells stay visible.

    Args:
        image (ndarray): (H, W, 3) uint8 BGR image.
        mask (ndarray): (h, w) cell mask, 1 = down-sampled (OS16).
        scale (float): image size / network input size. Default: 1.
        pred (ndarray, optional): (H, W, 3) uint8 BGR prediction colours.
        min_height (int): enlarge smaller images to at least this height.
            Default: 256.
    """
    factor = max(1, math.ceil(min_height / image.shape[0]))
    if factor > 1:
        def enlarge(img):
            return cv2.resize(img, (img.shape[1] * factor,
                                    img.shape[0] * factor),
                              interpolation=cv2.INTER_NEAREST)
        image = enlarge(image)
        pred = None if pred is None else enlarge(pred)
    panels = [overlay_mask(image, mask, scale * factor)]
    if pred is not None:
        panels.append(overlay_mask(pred, mask, scale * factor, alpha=0.0))
    top = np.concatenate(panels, axis=1)
    return np.concatenate([top, legend(top.shape[1])], axis=0)


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
