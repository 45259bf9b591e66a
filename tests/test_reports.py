"""The library's figures, tables and mask overlays (what the demo and the
benchmark write), on small synthetic inputs."""
from types import SimpleNamespace

import cv2
import numpy as np
import pytest
import torch

from mmselds.analysis.plots import plot_cost_accuracy, plot_ratios
from mmselds.analysis.report import results_table, sweep_lines
from mmselds.visualization import write_mask_overlays

RESULTS = {
    'OS8': dict(mIoU=40.14, ds_ratio=None, backbone_gmacs=0.387,
                latency_ms=20.8),
    'OS16': dict(mIoU=33.22, ds_ratio=None, backbone_gmacs=0.135,
                 latency_ms=16.9),
    'selective': dict(mIoU=38.76, ds_ratio=0.851, backbone_gmacs=0.174,
                      latency_ms=24.9),
}
SWEEP = [dict(threshold=t, mIoU=m, ds_ratio=s, backbone_gmacs=g)
         for t, m, s, g in ((0.9, 41.35, 0.0, 0.387), (0.5, 38.8, 0.85, 0.174),
                            (0.45, 38.8, 0.85, 0.174), (0.1, 36.85, 1.0,
                                                        0.135))]


def read_png(path) -> np.ndarray:
    assert open(path, 'rb').read(8) == b'\x89PNG\r\n\x1a\n'
    image = cv2.imread(str(path))
    assert image is not None
    return image


def test_results_table_has_a_row_per_model():
    rows = results_table(RESULTS).splitlines()
    assert rows[:2] == [
        '| model | mIoU | ds ratio | backbone GMACs | CPU ms / image |',
        '|---|---|---|---|---|']
    assert rows[2:] == ['| OS8 | 40.14 | - | 0.387 | 20.8 |',
                        '| OS16 | 33.22 | - | 0.135 | 16.9 |',
                        '| selective | 38.76 | 0.851 | 0.174 | 24.9 |']


def test_results_table_has_the_whole_model_column_when_all_have_it():
    whole = {name: dict(r, model_gmacs=g) for (name, r), g in
             zip(RESULTS.items(), (0.421, 0.146, 0.189))}
    rows = results_table(whole).splitlines()
    assert rows[0] == ('| model | mIoU | ds ratio | backbone GMACs | '
                       'model GMACs | CPU ms / image |')
    assert rows[1] == '|---|---|---|---|---|---|'
    assert rows[4] == '| selective | 38.76 | 0.851 | 0.174 | 0.189 | 24.9 |'
    # one model without it: no column rather than a hole
    whole['OS16'].pop('model_gmacs')
    assert 'model GMACs' not in results_table(whole)


def test_results_table_has_the_forward_time_when_all_have_it():
    timed = {name: dict(r, forward_ms=ms, model_gmacs=0.1) for (name, r), ms
             in zip(RESULTS.items(), (12.25, 9.0, 11.0))}
    rows = results_table(timed).splitlines()
    assert rows[0] == ('| model | mIoU | ds ratio | backbone GMACs | '
                       'model GMACs | forward ms / image | CPU ms / image |')
    assert rows[1] == '|' + '---|' * 7
    assert rows[2] == '| OS8 | 40.14 | - | 0.387 | 0.100 | 12.2 | 20.8 |'


def test_sweep_lines_have_a_line_per_threshold():
    lines = sweep_lines(SWEEP).splitlines()
    assert len(lines) == len(SWEEP)
    assert lines[0] == ('  t=0.9: mIoU 41.35, ds ratio 0.000, backbone '
                        '0.387 GMACs')
    assert sweep_lines([]) == ''
    point = dict(SWEEP[0], model_gmacs=0.421)
    assert sweep_lines([point]).endswith(
        'backbone 0.387 GMACs, model 0.421 GMACs')
    # thresholds that differ in the fifth digit print differently (they
    # read t=0.5006 three times)
    close = [dict(SWEEP[0], threshold=t)
             for t in (0.50061234, 0.50063321, 0.50068, 0.9)]
    shown = [line.split(':')[0] for line in sweep_lines(close).splitlines()]
    assert shown == ['  t=0.50061', '  t=0.50063', '  t=0.50068', '  t=0.9']


def test_plot_cost_accuracy_writes_a_png(tmp_path):
    path = tmp_path / 'cost_accuracy.png'
    plot_cost_accuracy(RESULTS, SWEEP, str(path), xlabel='x', ylabel='y')
    assert read_png(path).shape == (528, 768, 3)  # 6.4 x 4.4 in, 120 dpi


def test_plot_cost_accuracy_reads_the_cost_key(tmp_path):
    path = tmp_path / 'model.png'
    with pytest.raises(KeyError, match='model_gmacs'):
        plot_cost_accuracy(RESULTS, SWEEP, str(path), cost='model_gmacs')
    results = {k: dict(r, model_gmacs=r['backbone_gmacs'] + 0.03)
               for k, r in RESULTS.items()}
    sweep = [dict(p, model_gmacs=p['backbone_gmacs'] + 0.03) for p in SWEEP]
    plot_cost_accuracy(results, sweep, str(path), cost='model_gmacs')
    assert read_png(path).shape == (528, 768, 3)


def test_plot_cost_accuracy_draws_several_selective_models(tmp_path):
    results = dict(RESULTS, **{'selective+head': dict(
        RESULTS['selective'], mIoU=39.0, backbone_gmacs=0.27)})
    sweeps = {'selective': SWEEP,
              'selective+head': [dict(p, mIoU=p['mIoU'] - 1) for p in SWEEP]}
    path = tmp_path / 'two.png'
    plot_cost_accuracy(results, sweeps, str(path))
    assert read_png(path).shape == (528, 768, 3)
    with pytest.raises(KeyError, match='selective.head'):
        plot_cost_accuracy(RESULTS, sweeps, str(path))
    with pytest.raises(ValueError, match='at most 4 selective models'):
        plot_cost_accuracy(results, {str(i): SWEEP for i in range(5)},
                           str(path))


def test_plot_cost_accuracy_needs_the_three_models(tmp_path):
    with pytest.raises(KeyError, match='OS16'):
        plot_cost_accuracy({'OS8': RESULTS['OS8']}, SWEEP,
                           str(tmp_path / 'f.png'))


def test_plot_ratios_writes_a_png(tmp_path):
    rows = [dict(case=case, backbone_time_ratio=t, model_time_ratio=t,
                 backbone_flops_ratio=f, model_flops_ratio=f)
            for case, t, f in (('OS8', 1.3, 1.0), ('OS16 opt', 0.4, 0.35),
                               ('s=0', 1.0, 1.0), ('s=0.5', 0.7, 0.67),
                               ('s=1', 0.45, 0.35))]
    path = tmp_path / 'ratios.png'
    plot_ratios(rows, str(path), 'title')
    assert read_png(path).shape[:2] == (int(3.8 * 120), 9 * 120)


class StubSegmentor:
    """``test_step`` as ``SelDSEncoderDecoder``'s: one data sample per
    image, with ``ds_mask`` at the image's size (every other column of
    cells down-sampled, starting at the image's index)."""

    def __init__(self, image_paths, shape=(32, 64)):
        self.paths, self.shape = image_paths, shape

    def test_step(self, batch):
        h, w = self.shape
        mask = torch.zeros(1, h // 16, w // 16)
        mask[..., :, batch['index'] % 2::2] = 1
        mask = mask.repeat_interleave(16, 1).repeat_interleave(16, 2)
        pred = torch.arange(h * w).reshape(1, h, w) % 3
        return [SimpleNamespace(img_path=self.paths[batch['index']],
                                img_shape=(h, w),
                                pred_sem_seg=SimpleNamespace(data=pred),
                                ds_mask=SimpleNamespace(data=mask))]


def test_write_mask_overlays_writes_one_figure_per_image(tmp_path):
    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f'img{i}_leftImg8bit.png'))
        cv2.imwrite(paths[-1], np.full((32, 64, 3), 60 * i, np.uint8))
    model = StubSegmentor(paths)
    batches = [dict(index=i) for i in range(3)]
    palette = [(128, 64, 128), (70, 70, 70), (107, 142, 35)]
    out_dir = tmp_path / 'masks'
    written = write_mask_overlays(model, batches, str(out_dir), palette, 2)
    assert written == [str(out_dir / f'img{i}_leftImg8bit_mask.png')
                       for i in range(2)]
    assert sorted(p.name for p in out_dir.iterdir()) == [
        'img0_leftImg8bit_mask.png', 'img1_leftImg8bit_mask.png']
    for path in written:
        height, width, _ = read_png(path).shape
        # image and prediction panels side by side, enlarged x8 to 256
        # rows, and the legend below
        assert width == 2 * 8 * 64 and height > 8 * 32
    # the cells drawn are the mask's: image 0 down-samples columns 0 and
    # 2 of its 2x4 cells (tinted), image 1 columns 1 and 3
    for i, path in enumerate(written):
        panel = read_png(path)[:256, :512].astype(int)
        centres = panel[64::128, 64::128]
        tinted = np.abs(centres - 60 * i).sum(-1) > 0
        assert (tinted == (np.arange(4) % 2 == i % 2)).all(), tinted
    assert write_mask_overlays(model, batches, str(out_dir), palette,
                               0) == []
