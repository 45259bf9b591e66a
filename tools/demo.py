"""The mmselds demo: selective down-sampling vs dense OS8 and OS16, end to
end on a CPU, on generated data in Cityscapes layout, with mmseg's own data
pipeline, IoUMetric and tools.

1. generates the synthetic data set (if absent; one it generated with
   other counts is replaced);
2. trains dense OS8 and dense OS16 DeepLabV3 (ResNet-18, narrow) with
   ``tools/train.py``, and fine-tunes two selective models from the OS8
   checkpoint, as one starts from a released mmseg model: ``selective``
   (the mask selects in the backbone; the ASPP head runs dense at OS8) and
   ``selective+head`` (the ASPP head follows the mask too);
3. evaluates them with mmseg's ``IoUMetric``, counts the multiply-adds of
   the backbone and of the whole model (backbone + decode head), times CPU
   inference (the forward, and tools/test.py's whole test_step; models
   interleaved, one run);
4. evaluates the selective models as ``tools/test.py`` does (each
   checkpoint's own decision rule: as many cells down-sampled as training
   did, no calibration step) and sweeps an explicit test-time threshold
   (one checkpoint, several cost/accuracy points);
5. prints a table and a verdict, writes ``results.json``/``results.md``,
   mask overlays (``masks/<model>/*.png``) and ``cost_accuracy.png`` to
   --work-dir.

Example::

    python tools/demo.py --work-dir work_dirs/demo
"""
import argparse
import json
import math
import os
import os.path as osp
import sys
import time

import torch

import mmselds  # noqa: F401
from mmselds.analysis import (mask_probabilities, model_macs, reference_macs,
                              threshold_for_ratio)
from mmselds.analysis.plots import plot_cost_accuracy
from mmselds.analysis.report import results_table, sweep_lines
from mmselds.datasets import generate_with_progress, is_generated
from mmselds.utils.arguments import non_negative_int, summary
from mmselds.utils.evaluation import (build_test_loader, evaluate,
                                      load_batches, time_models)
from mmselds.utils.launch import run_cli, train_or_reuse
from mmselds.utils.model_io import build_segmentor
from mmselds.visualization import boundary_cells, write_mask_overlays

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(ROOT, 'configs', 'demo')
CONFIGS = {
    'OS8': 'deeplabv3_r18-d8_1xb8-400it_synthcity-128x256.py',
    'OS16': 'deeplabv3_r18-d16_1xb8-400it_synthcity-128x256.py',
    'selective': 'deeplabv3-selds-prop2_r18-d8_1xb8-200it-ft_synthcity-'
                 '128x256.py',
    'selective+head': 'deeplabv3-selds-prop2-head_r18-d8_1xb8-200it-ft_'
                      'synthcity-128x256.py',
}
SELECTIVE = ('selective', 'selective+head')
START = time.time()


def log(msg: str) -> None:
    print(f'[demo {time.time() - START:6.0f}s] {msg}', flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=summary(__doc__))
    p.add_argument('--work-dir', default='work_dirs/demo')
    p.add_argument('--data-root', default='data/synthetic_cityscapes')
    p.add_argument('--num-train', type=non_negative_int, default=200)
    p.add_argument('--num-val', type=non_negative_int, default=50)
    p.add_argument('--iters', type=int, help='training iterations of every '
                   'model (default: the configs\', 400 and 200 to fine-tune)')
    p.add_argument('--batch-size', type=int, help='training batch size '
                   '(default: the configs\')')
    p.add_argument('--thresholds', type=float, nargs='+',
                   help='test-time thresholds swept on the selective model '
                   '(default: the quantiles of P(down-sample) on the val '
                   'cells that give ratios 0, 0.1, 0.25, 0.5, 0.75, 0.9, 1)')
    p.add_argument('--num-overlays', type=int, default=6)
    p.add_argument('--retrain', action='store_true',
                   help='train again even if checkpoints exist')
    return p.parse_args()


# ----------------------------------------------------------------- steps
def ensure_data(args) -> None:
    if is_generated(args.data_root, args.num_train, args.num_val,
                    (128, 256), seed=0):
        log(f'data: {args.data_root} ({args.num_train} train, '
            f'{args.num_val} val images) already there')
        return
    log(f'data: generating {args.num_train} + {args.num_val} images in '
        f'{args.data_root}')
    generate_with_progress(args.data_root, args.num_train, args.num_val,
                           (128, 256), seed=0)


def data_options(data_root: str) -> list:
    return [f'{loader}.dataset.data_root={data_root}'
            for loader in ('train_dataloader', 'val_dataloader',
                           'test_dataloader')]


def slug(name: str) -> str:
    """A model's name as a folder name."""
    return name.replace('+', '_')


def train(name: str, config: str, args, load_from: str = None) -> str:
    """Train with tools/train.py; return the final checkpoint (that of an
    earlier run of the same config and options in the work dir, unless
    --retrain)."""
    opts = data_options(args.data_root)
    if args.iters:
        warmup = max(1, min(20, args.iters // 5))  # linear, then poly
        opts += [f'train_cfg.max_iters={args.iters}',
                 f'train_cfg.val_interval={args.iters}',
                 f'default_hooks.checkpoint.interval={args.iters}',
                 f'param_scheduler.0.end={warmup}',
                 f'param_scheduler.1.begin={warmup}',
                 f'param_scheduler.1.end={args.iters}']
    if args.batch_size:
        opts.append(f'train_dataloader.batch_size={args.batch_size}')
    if load_from:
        opts.append(f'load_from={load_from}')
    return train_or_reuse(name, config, osp.join(args.work_dir, slug(name)),
                          opts, args.retrain, log)


def gmacs(model, size, ratio=None) -> dict:
    """``backbone_gmacs`` and ``model_gmacs`` (backbone + decode head, the
    inference cost) per image at the down-sampling ratio ``ratio``."""
    macs = model_macs(model, size, [ratio] if ratio is not None else [0.0])
    return dict(backbone_gmacs=macs['backbone'] / 1e9,
                model_gmacs=macs['total'] / 1e9)


def mask_statistics(model, batches):
    """Fraction of all cells and of boundary cells kept at full resolution
    on the validation images (the selective model's own masks)."""
    kept = boundary_kept = boundary = cells = 0
    with torch.no_grad():
        for batch in batches:
            out = model.test_step(batch)[0]
            mask = model.backbone.last_mask[0, 0].cpu().numpy()
            label = out.gt_sem_seg.data[0].cpu().numpy()
            scale = label.shape[0] / out.img_shape[0]
            edges = boundary_cells(label, max(1, round(16 * scale)))
            h, w = min(edges.shape[0], mask.shape[0]), min(edges.shape[1],
                                                           mask.shape[1])
            full, edges = mask[:h, :w] < 0.5, edges[:h, :w]
            kept += full.sum()
            cells += full.size
            boundary_kept += (full & edges).sum()
            boundary += edges.sum()
    return kept / cells, boundary_kept / max(boundary, 1)


def verdict(results, sweeps) -> str:
    os8, os16 = results['OS8'], results['OS16']
    gain = os8['mIoU'] - os16['mIoU']
    lines = []
    if gain <= 0.5:
        lines.append(
            f'accuracy: this short CPU schedule did not separate OS8 from '
            f'OS16 (mIoU {os8["mIoU"]:.1f} vs {os16["mIoU"]:.1f}), so it '
            'cannot show where a selective model sits between them.')
    for name, sweep in sweeps.items():
        sel = results[name]
        lines.append(f'{name}:')
        for part, key in (('whole-model', 'model_gmacs'),
                          ('backbone', 'backbone_gmacs')):
            g_sel, g16, g8 = (r[key] for r in (sel, os16, os8))
            lines.append(
                f'  {part} cost: {(g_sel - g16) / (g8 - g16):.0%} of the way '
                f'from OS16 to OS8 ({g_sel:.3f} vs {g16:.3f} and {g8:.3f} '
                'GMACs).')
        cost = (sel['model_gmacs'] - os16['model_gmacs']) / (
            os8['model_gmacs'] - os16['model_gmacs'])
        met = False
        if gain > 0.5:
            acc = (sel['mIoU'] - os16['mIoU']) / gain
            lines.append(f'  accuracy: recovers {acc:.0%} of the OS8 gain '
                         f'over OS16 ({sel["mIoU"]:.1f} vs '
                         f'{os16["mIoU"]:.1f} and {os8["mIoU"]:.1f} mIoU).')
            met = acc > 0.5 and cost < 0.5
        lines.append(
            f'  down-sampling ratio: {sel["ds_ratio"]:.3f} on the val images '
            'with the checkpoint\'s own rule (as tools/test.py runs it), '
            f'{sel["trained_ratio"]:.3f} at the end of training.')
        lines.append(
            f'  full-resolution cells: {sel["boundary_kept"]:.0%} of the '
            f'cells on object boundaries vs {sel["kept"]:.0%} of all cells.')
        lines.append(
            f'  CPU time per image: forward {sel["forward_ms"]:.1f} ms vs '
            f'OS16 {os16["forward_ms"]:.1f} and OS8 {os8["forward_ms"]:.1f} '
            f'ms, {sel["forward_ms"] / os8["forward_ms"]:.2f}x OS8\'s time '
            f'at {sel["model_gmacs"] / os8["model_gmacs"]:.2f}x its '
            f'multiply-adds; test_step {sel["latency_ms"]:.1f} ms vs '
            f'{os16["latency_ms"]:.1f} and {os8["latency_ms"]:.1f} ms.')
        full = [p for p in sweep if p['ds_ratio'] == 0]
        if full:
            lines.append(
                f'  with every cell at full resolution: {full[0]["mIoU"]:.1f}'
                ' mIoU (fine-tuned from the OS8 checkpoint, it trained '
                'longer than OS8, which is part of its accuracy).')
        lines.append('  quality bar (mIoU closer to OS8, whole-model cost '
                     'closer to OS16): ' +
                     ('met.' if met else 'NOT met on this run.'))
    lines.append(
        'At this toy size (under 0.5 GMACs) each layer\'s fixed cost (op '
        'calls, index tables, gathers, the mask head) weighs about as much '
        'as its multiply-adds, so time falls much less than the '
        'multiply-adds; at DeepLabV3-R101 512x1024 it follows them '
        '(docs/benchmarks.md).')
    return '\n'.join(lines)


def main():
    args = parse_args()
    if args.iters is not None and args.iters < 2:
        sys.exit('--iters must be at least 2')
    os.makedirs(args.work_dir, exist_ok=True)
    torch.manual_seed(0)
    ensure_data(args)
    checkpoints = {}
    for name, cfg in CONFIGS.items():
        checkpoints[name] = train(
            name, osp.join(DEMO, cfg), args,
            checkpoints['OS8'] if name in SELECTIVE else None)

    log('evaluating with mmseg IoUMetric ...')
    models, results = {}, {}
    for name, ckpt in checkpoints.items():
        models[name], cfg = build_segmentor(osp.join(DEMO, CONFIGS[name]),
                                            ckpt)
    loader = build_test_loader(cfg, args.data_root)
    batches = load_batches(loader)
    meta = loader.dataset.metainfo
    size = tuple(batches[0]['inputs'][0].shape[1:])
    size = (-(-size[0] // 16) * 16, -(-size[1] // 16) * 16)
    for name in SELECTIVE:
        head = models[name].backbone.mask_head
        log(f'{name}: trained at ds ratio {float(head.trained_ratio):.3f} '
            '(running mean kept in the checkpoint); test-time rule: '
            f'{head.decision_rule()}')
    for name, model in models.items():
        metrics = evaluate(model, batches, meta) if name not in SELECTIVE \
            else evaluate(model, batches, meta, [
                dict(type='IoUMetric', iou_metrics=['mIoU']),
                dict(type='DownsampleRatioMetric')])
        ratio = metrics.get('ds_ratio')
        results[name] = dict(mIoU=metrics['mIoU'], ds_ratio=ratio,
                             **gmacs(model, size, ratio))
        log(f'{name}: mIoU {metrics["mIoU"]:.2f}' +
            ('' if ratio is None else f', ds ratio {ratio:.3f}'))
    refs = reference_macs(models['selective'], size)
    for name in ('OS8', 'OS16'):  # mmseg's dense networks of the same size
        assert abs(results[name]['backbone_gmacs'] -
                   refs[name]['backbone'] / 1e9) < 1e-6
        assert abs(results[name]['model_gmacs'] -
                   refs[name]['total'] / 1e9) < 1e-6

    log('timing CPU inference, models interleaved ...')
    for name, sec in time_models(models, batches).items():
        results[name].update(latency_ms=sec['test_step'] * 1e3,
                             forward_ms=sec['forward'] * 1e3)
    sweeps, overlays = {}, {}
    for name in SELECTIVE:
        selective = models[name]
        head = selective.backbone.mask_head
        kept, boundary_kept = mask_statistics(selective, batches)
        results[name].update(kept=kept, boundary_kept=boundary_kept,
                             trained_ratio=float(head.trained_ratio),
                             rule=head.decision_rule())
        probs = mask_probabilities(selective, batches)
        thresholds = args.thresholds or sorted(
            {threshold_for_ratio(probs, r)
             for r in (0, 0.1, 0.25, 0.5, 0.75, 0.9, 1)} | {0.5},
            reverse=True)
        log(f'{name}: sweeping the test-time threshold over '
            f'{[round(t, 4) for t in thresholds]} ...')
        sweeps[name] = []
        for t in thresholds:
            head.threshold = t
            m = evaluate(selective, batches, meta, [
                dict(type='IoUMetric', iou_metrics=['mIoU']),
                dict(type='DownsampleRatioMetric')])
            sweeps[name].append(dict(threshold=t, mIoU=m['mIoU'],
                                     ds_ratio=m['ds_ratio'],
                                     **gmacs(selective, size, m['ds_ratio'])))
            print(f'    threshold {t:.4g}: mIoU {m["mIoU"]:6.2f}  ds ratio '
                  f'{m["ds_ratio"]:.3f}  model '
                  f'{sweeps[name][-1]["model_gmacs"]:.3f} GMACs', flush=True)
        head.threshold = None  # back to the checkpoint's own rule
        overlays[name] = write_mask_overlays(
            selective, batches, osp.join(args.work_dir, 'masks', slug(name)),
            meta['palette'], args.num_overlays)

    figure = osp.join(args.work_dir, 'cost_accuracy.png')
    plot_cost_accuracy(results, sweeps, figure,
                       xlabel='GMACs per image, backbone + decode head '
                       '(128x256 input)',
                       ylabel='mIoU (%) on the synthetic val set',
                       cost='model_gmacs')
    summary = f'\n{results_table(results)}\n\n{verdict(results, sweeps)}'
    for name, sweep in sweeps.items():
        summary += f'\n\nthreshold sweep ({name}):\n{sweep_lines(sweep)}'
    print(summary)
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(dict(results=results, sweeps=sweeps, input_size=size,
                       threads=torch.get_num_threads()), f, indent=2,
                  default=float)
    with open(osp.join(args.work_dir, 'results.md'), 'w') as f:
        f.write(f'# mmselds demo results\n{summary}\n')
    log(f'wrote {figure}, mask overlays in '
        f'{osp.join(args.work_dir, "masks")} '
        f'({", ".join(f"{slug(n)}/: {len(o)}" for n, o in overlays.items())}'
        '), results.json, results.md')
    if any(math.isnan(r['mIoU']) for r in results.values()):
        sys.exit('an mIoU is NaN')


if __name__ == '__main__':
    run_cli(main)
