"""tools/analysis_tools/visualize_masks.py: the figure (mask on the image,
prediction panel, legend, small images enlarged), --threshold checked and
applied, unreadable images skipped and listed with a non-zero exit."""
import sys

import cv2
import numpy as np
import pytest
import torch

from mmselds.visualization import legend, mask_panel, palette_image
from mmselds.visualization.masks import DOWN_TINT, FULL_EDGE
from tests import toolrun
from tests.helpers import ROOT, SELDS_DEMO

TOOL = 'tools/analysis_tools/visualize_masks.py'


def tool(*args):
    proc = toolrun.run([sys.executable, TOOL, *map(str, args)], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
    return proc.returncode, proc.stdout, proc.stderr


def has_color(img, bgr):
    return bool((img.reshape(-1, 3) == np.array(bgr, np.uint8)).all(1).any())


def test_panel_enlarges_small_images_and_has_prediction_and_legend():
    image = np.full((64, 128, 3), 100, np.uint8)
    mask = np.zeros((4, 8))
    mask[:, :4] = 1  # left half down-sampled
    pred = palette_image(np.ones((64, 128), np.int64), [(0, 0, 0),
                                                        (10, 200, 30)])
    assert (pred == (30, 200, 10)).all()  # RGB palette -> BGR
    panel = mask_panel(image, mask, 1.0, pred, min_height=256)
    strip = legend(1024)
    assert panel.shape == (256 + strip.shape[0], 2 * 512, 3)
    assert (panel[-strip.shape[0]:] == strip).all()
    assert has_color(strip, FULL_EDGE)  # outlined swatch
    tint = (0.45 * 40 + 0.55 * np.array(DOWN_TINT)).astype(np.uint8)
    assert has_color(strip, tint)  # tinted swatch
    left, right = panel[:256, :512], panel[:256, 512:]
    # cells of 16 input pixels are 64 pixels wide after the 4x enlargement;
    # the outline of the first full-resolution cell (column 4) is at x=256
    assert (left[100, 256] == FULL_EDGE).all()
    assert (left[100, 255] != FULL_EDGE).any()
    assert not (left[100:200, 100] == 100).all(1).any()  # tinted
    # the prediction panel: the class colour, cells outlined, no tint
    assert (right[100, 100] == (30, 200, 10)).all()
    assert (right[100, 256] == FULL_EDGE).all()
    # a small legend stacks its two entries when one row is too narrow
    assert legend(120).shape[0] == 2 * legend(1024).shape[0]


@pytest.fixture(scope='module')
def checkpoint(tmp_path_factory):
    """The demo selective config's model, random weights."""
    from mmselds.utils.model_io import build_segmentor
    model, _ = build_segmentor(SELDS_DEMO)
    path = tmp_path_factory.mktemp('ckpt') / 'random.pth'
    torch.save({'meta': {}, 'state_dict': model.state_dict()}, path)
    return path


def test_threshold_outside_unit_interval_is_rejected(checkpoint, tmp_path):
    for bad in ('1.5', '-0.1', 'nan'):
        rc, _, err = tool(SELDS_DEMO, checkpoint, 'x.png', '--out-dir',
                          tmp_path, '--threshold', bad)
        assert rc == 2 and f'must be a probability in [0, 1], got {bad}' \
            in err, err


def test_unreadable_images_are_listed_after_the_others(checkpoint, tiny_data,
                                                       tmp_path):
    from pathlib import Path
    good = sorted(Path(tiny_data).glob('leftImg8bit/val/*/*.png'))[:2]
    corrupt = tmp_path / 'corrupt_leftImg8bit.png'
    corrupt.write_bytes(b'\x89PNG\r\n\x1a\n' + b'not an image' * 10)
    missing = tmp_path / 'missing.png'
    out_dir = tmp_path / 'out'
    rc, out, err = tool(SELDS_DEMO, checkpoint, good[0], corrupt, missing,
                        good[1], '--out-dir', out_dir, '--threshold', 1)
    assert rc == 1, out + err
    # both readable images drawn, the one after the failures too
    written = sorted(p.name for p in out_dir.glob('*.png'))
    assert written == sorted(p.stem + '_mask.png' for p in good)
    # --threshold 1: P(down-sample) > 1 never holds: all full resolution
    assert 'P(down-sample) > 1 (explicit threshold)' in out
    assert out.count('100.0% of cells at full resolution') == 2
    assert 'error: 2 of 4 images failed:' in err
    assert f'{corrupt}: OSError: not a readable image' in err
    assert f'{missing}: OSError: no such file' in err
    figure = cv2.imread(str(out_dir / written[0]))
    # 64x128 images enlarged 4x to 256 high, image + prediction side by side,
    # legend below
    assert figure.shape[1] == 2 * 512 and figure.shape[0] > 256
    assert has_color(figure[256:], FULL_EDGE)


def test_a_folder_stands_for_its_images(checkpoint, tiny_data, tmp_path):
    """A folder (Cityscapes' leftImg8bit/val, with its city subfolders)
    is drawn image by image (was: "skipped (OSError: no such file)");
    one without images is an error naming it."""
    from pathlib import Path
    val = Path(tiny_data) / 'leftImg8bit' / 'val'
    images = sorted(val.glob('*/*.png'))
    assert len(images) == 4 and len({p.parent for p in images}) == 2
    out_dir = tmp_path / 'out'
    rc, out, err = tool(SELDS_DEMO, checkpoint, val, '--out-dir', out_dir)
    assert rc == 0, out + err
    assert sorted(p.name for p in out_dir.glob('*.png')) == sorted(
        p.stem + '_mask.png' for p in images)
    empty = tmp_path / 'empty'
    empty.mkdir()
    (empty / 'notes.txt').write_text('x')
    rc, out, err = tool(SELDS_DEMO, checkpoint, empty, '--out-dir', out_dir)
    assert rc == 1 and f'error: the folder {empty} holds no images' in err
    # the same file name in two folders would overwrite one figure
    import shutil
    twin = tmp_path / 'twin'
    twin.mkdir()
    shutil.copy(images[0], twin / images[0].name)
    rc, out, err = tool(SELDS_DEMO, checkpoint, val, twin, '--out-dir',
                        out_dir)
    assert rc == 1 and 'would both be drawn to' in err, err
    # figures written inside the input folder are not drawn again
    rc, out, err = tool(SELDS_DEMO, checkpoint, twin, '--out-dir',
                        twin / 'masks')
    rc, out, err = tool(SELDS_DEMO, checkpoint, twin, '--out-dir',
                        twin / 'masks')
    assert rc == 0 and out.count('of cells at full resolution') == 1, out


def test_slide_inference_draws_the_mask_of_every_window(checkpoint,
                                                        tiny_data, tmp_path):
    """With slide inference the figure shows the mask over the whole
    image (the results' ``ds_mask``); it was the last window's, drawn in
    the top-left corner. --threshold 0: every cell down-sampled, so every
    cell of the image is tinted."""
    from pathlib import Path
    image = sorted(Path(tiny_data).glob('leftImg8bit/val/*/*.png'))[0]
    rc, out, err = tool(SELDS_DEMO, checkpoint, image, '--out-dir', tmp_path,
                        '--threshold', 0, '--cfg-options',
                        'model.test_cfg.mode=slide',
                        'model.test_cfg.crop_size=(32,64)',
                        'model.test_cfg.stride=(16,32)')
    assert rc == 0, out + err
    assert '0.0% of cells at full resolution' in out, out
    source = cv2.imread(str(image))
    assert source.shape[:2] == (64, 128)
    figure = cv2.imread(str(tmp_path / (image.stem + '_mask.png')))
    left = figure[:256, :512].astype(int)
    enlarged = np.repeat(np.repeat(source, 4, 0), 4, 1).astype(int)
    centres = (np.arange(4) * 64 + 32, np.arange(8) * 64 + 32)
    tinted = np.abs(left - enlarged)[np.ix_(*centres)].sum(-1) > 0
    assert tinted.all(), tinted


def test_cell_values_recover_the_cells_through_resize_and_padding():
    """``cell_values`` of a result's ``ds_mask`` are the cells the
    backbone decided, for network inputs resized from the image by
    several factors (keeping the aspect ratio, up to rounding) and padded
    to a multiple of 16."""
    from mmselds.models.segmentors.selds_encoder_decoder import (
        cell_pixels, to_original_size)
    from mmselds.visualization import cell_values
    g = torch.Generator().manual_seed(0)
    for ori, img in (((64, 128), (64, 128)), ((40, 80), (48, 96)),
                     ((300, 500), (72, 120)), ((37, 91), (80, 197))):
        padded = tuple(-(-n // 16) * 16 for n in img)
        cells = (torch.rand(1, 1, padded[0] // 16, padded[1] // 16,
                            generator=g) < 0.5).float()
        meta = dict(ori_shape=ori, padding_size=[
            0, padded[1] - img[1], 0, padded[0] - img[0]])
        mask = to_original_size(cell_pixels(cells, padded), meta)[0, 0]
        assert mask.shape == ori
        got = cell_values(mask.numpy(), ori[0] / img[0])
        want = cells[0, 0, :-(-img[0] // 16), :-(-img[1] // 16)].numpy()
        assert np.array_equal(got, want), (ori, img)


def test_visualizer_outlines_full_resolution_cells_on_the_prediction(
        tmp_path):
    """``SelDSLocalVisualizer`` (the selective configs' visualizer, used by
    ``tools/test.py --show-dir`` and the inferencer): mmseg's figure, with
    the OS8 cells of the result's ``ds_mask`` outlined on the prediction
    panel only; ``draw_mask=False`` and results without a mask give
    mmseg's figure."""
    from mmengine.structures import PixelData
    from mmseg.registry import VISUALIZERS
    from mmseg.structures import SegDataSample

    import mmselds  # noqa: F401
    meta = dict(classes=('road', 'car'), palette=[[0, 0, 0], [10, 200, 30]])
    image = np.full((64, 128, 3), 90, np.uint8)
    sample = SegDataSample(metainfo=dict(img_shape=(32, 64)))  # resized x2
    sample.gt_sem_seg = PixelData(data=torch.zeros(1, 64, 128).long())
    sample.pred_sem_seg = PixelData(data=torch.ones(1, 64, 128).long())
    mask = torch.ones(1, 64, 128)
    mask[..., 64:] = 0  # the right half computed at OS8: 2 columns of cells
    sample.ds_mask = PixelData(data=mask)
    plain = SegDataSample(metainfo=sample.metainfo)
    plain.gt_sem_seg, plain.pred_sem_seg = sample.gt_sem_seg, \
        sample.pred_sem_seg
    edge = np.array(FULL_EDGE, np.uint8)  # BGR, as cv2 reads the file

    def draw(name, data_sample, **options):
        visualizer = VISUALIZERS.build(dict(
            type=options.pop('type', 'SelDSLocalVisualizer'),
            name=f'test_{name}', **options))
        visualizer.dataset_meta = meta
        path = str(tmp_path / f'{name}.png')
        visualizer.add_datasample(name, image, data_sample,
                                  with_labels=False, out_file=path)
        return cv2.imread(path)

    figure = draw('mask', sample)
    assert figure.shape == (64, 256, 3)  # ground truth | prediction
    gt, pred = figure[:, :128], figure[:, 128:]
    assert not has_color(gt, FULL_EDGE)
    assert not has_color(pred[:, :64], FULL_EDGE)
    # cells are 16 input pixels = 32 image pixels: edges at x = 64, 96
    assert (pred[40, 64] == edge).all() and (pred[40, 96] == edge).all()
    assert (pred[32, 70] == edge).all()  # the edge between two rows
    assert (pred[40, 80] != edge).any()  # inside a cell
    mmseg_figure = draw('mmseg', sample, type='SegLocalVisualizer')
    assert np.array_equal(draw('off', sample, draw_mask=False), mmseg_figure)
    assert np.array_equal(draw('plain', plain), mmseg_figure)
    assert np.array_equal(gt, mmseg_figure[:, :128])
