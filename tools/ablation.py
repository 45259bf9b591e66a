"""The letter's Table 1 on one command: the CAD baseline vs Prop. 1 vs
Prop. 2, same starting point, schedule, data and seeds, on the generated
street scenes (or any Cityscapes-layout data).

1. generates the synthetic data set (if absent; one it generated with
   other counts is replaced, other data is used as it is);
2. trains dense OS8 once (the common starting point) and dense OS16 (the
   cheap reference) with ``tools/train.py``;
3. per seed, fine-tunes every row's config from the OS8 checkpoint with
   the same schedule and seed: first the rows whose sparsity loss sets no
   target (Prop. 2: target-free), then the rows with a target loss (CAD,
   Prop. 1) with the target set to the ratio the target-free rows reached
   in training (``--cfg-options model.sparsity_loss.target=R``);
4. evaluates each checkpoint as ``tools/test.py`` does (mmseg's
   ``IoUMetric`` and ``DownsampleRatioMetric``, the checkpoint's own
   test-time rule), then sweeps an explicit test-time threshold
   (``model.backbone.mask_head.threshold``) set per row for common
   down-sampling ratios, Prop. 2's own ratio included: one cost/accuracy
   curve per row (a ratio no threshold reaches, because of tied
   probabilities, is measured with the per-image top-k rule at the ratio,
   ``mmselds.analysis.ratio_rule``, and the verdict says so);
5. prints the table in the letter's form (components read from the built
   models), the curves and a verdict with the seed spread (mean ±
   half-range), and writes ``results.json``, ``results.md`` and
   ``ablation.png`` to --work-dir.

Runs of the same config and options are reused when it runs again
(--retrain to train anew); --jobs N trains up to N runs that do not wait on
each other at a time. Results: docs/ablation.md.

Example::

    python tools/ablation.py --work-dir work_dirs/ablation
"""
import argparse
import json
import math
import os
import os.path as osp
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from functools import partial

import torch
from mmengine.config import DictAction

import mmselds  # noqa: F401
from mmselds.analysis import (mask_probabilities, model_macs,
                              threshold_for_ratio)
from mmselds.analysis.ablation import (LETTER_SHAPE, aggregate_runs,
                                       compare_rows, format_spread, has_spread,
                                       letter_row, model_components, spread)
from mmselds.analysis.plots import plot_ablation
from mmselds.analysis.ratio_rule import fixed_ratio_rule, largest_tie
from mmselds.analysis.report import ablation_curve_lines, ablation_table
from mmselds.datasets import generate_with_progress, is_generated, read_record
from mmselds.utils.arguments import non_negative_int, summary
from mmselds.utils.config import argument_error, option_error
from mmselds.utils.evaluation import build_test_loader, evaluate, load_batches
from mmselds.utils.launch import run_cli, train_or_reuse
from mmselds.utils.model_io import build_segmentor

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
DEMO = osp.join(ROOT, 'configs', 'demo')
ROW_CONFIGS = [
    osp.join(DEMO, f'deeplabv3-selds-{name}_r18-d8_1xb8-200it-ft_synthcity-'
             '128x256.py') for name in ('cad', 'prop1', 'prop2')
]
DENSE_CONFIGS = dict(
    OS8=osp.join(DEMO, 'deeplabv3_r18-d8_1xb8-400it_synthcity-128x256.py'),
    OS16=osp.join(DEMO, 'deeplabv3_r18-d16_1xb8-400it_synthcity-128x256.py'))
RATIOS = (0.0, 0.25, 0.5, 0.75, 0.9, 1.0)
# a sweep point whose threshold misses its ratio by more than this (tied
# probabilities) is measured with the per-image top-k rule instead
RATIO_TOL = 0.01
METRICS = [dict(type='IoUMetric', iou_metrics=['mIoU']),
           dict(type='DownsampleRatioMetric')]
START = time.time()


def log(msg: str) -> None:
    print(f'[ablation {time.time() - START:6.0f}s] {msg}', flush=True)


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=summary(__doc__))
    p.add_argument('configs', nargs='*', default=ROW_CONFIGS,
                   help='the rows: selective down-sampling configs, each '
                   'fine-tuned from the dense OS8 checkpoint (default: the '
                   'demo-scale CAD, Prop. 1 and Prop. 2 configs)')
    p.add_argument('--work-dir', default='work_dirs/ablation',
                   help='where checkpoints, logs and results go (default: '
                   '%(default)s)')
    p.add_argument('--os8-config', default=DENSE_CONFIGS['OS8'],
                   help='the dense OS8 model: the rows\' starting point '
                   '(default: the demo\'s)')
    p.add_argument('--os16-config', default=DENSE_CONFIGS['OS16'],
                   help='the dense OS16 model, a reference point (default: '
                   'the demo\'s)')
    p.add_argument('--data-root', default='data/synthetic_cityscapes',
                   help='Cityscapes-layout data, generated if absent or '
                   'generated with other counts '
                   '(default: %(default)s)')
    p.add_argument('--num-train', type=non_negative_int, default=200,
                   help='training images to generate (default: %(default)s)')
    p.add_argument('--num-val', type=non_negative_int, default=50,
                   help='validation images to generate (default: '
                   '%(default)s)')
    p.add_argument('--seeds', type=int, nargs='+', default=[0, 1],
                   help='one fine-tuning run of every row per seed (default: '
                   '%(default)s)')
    p.add_argument('--iters', type=int,
                   help='fine-tuning iterations of every row (default: the '
                   'configs\')')
    p.add_argument('--dense-iters', type=int,
                   help='training iterations of dense OS8 and OS16 '
                   '(default: the configs\')')
    p.add_argument('--batch-size', type=int,
                   help='training batch size (default: the configs\')')
    p.add_argument('--num-workers', type=int,
                   help='data-loader worker processes of every training run '
                   '(default: the configs\')')
    p.add_argument('--jobs', type=int, default=1,
                   help='training processes at a time (the runs that do not '
                   'wait on each other; default: %(default)s)')
    p.add_argument('--target', choices=['matched', 'config'],
                   default='matched',
                   help='the target of the rows with a target sparsity '
                   'loss: "matched" = the mean ratio the target-free rows '
                   'trained to (same seed); "config" = the config\'s '
                   '(default: %(default)s)')
    p.add_argument('--ratios', type=float, nargs='+', default=list(RATIOS),
                   help='down-sampling ratios of the threshold sweep (each '
                   'row\'s threshold is set per ratio on its P(down-sample) '
                   'of the val cells); the target-free rows\' own ratio is '
                   'added (default: %(default)s)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction,
                   help='override settings of every row\'s config (not the '
                   'dense ones), key=value pairs, e.g. '
                   'model.backbone.mask_head.tau=0.5')
    p.add_argument('--retrain', action='store_true',
                   help='train again even if checkpoints of the same '
                   'settings exist')
    args = p.parse_args(argv)
    check_args(p, args)
    return args


def check_args(parser, args) -> None:
    """Stop with a clear message on bad input (before any training)."""
    for path in [*args.configs, args.os8_config, args.os16_config]:
        if not osp.isfile(path):
            parser.error(f'config {path} not found')
    if len(set(map(osp.abspath, args.configs))) != len(args.configs):
        parser.error('a config is listed twice')
    if len(set(args.seeds)) != len(args.seeds):
        parser.error(f'--seeds has duplicates: {args.seeds}')
    for name in ('iters', 'dense_iters'):
        value = getattr(args, name)
        if value is not None and value < 2:
            parser.error(f'--{name.replace("_", "-")} must be at least 2, '
                         f'got {value}')
    if args.jobs < 1:
        parser.error(f'--jobs must be at least 1, got {args.jobs}')
    if args.num_workers is not None and args.num_workers < 0:
        parser.error(f'--num-workers must be >= 0, got {args.num_workers}')
    if args.batch_size is not None and args.batch_size < 1:
        parser.error(f'--batch-size must be positive, got {args.batch_size}')
    for name in ('num_train', 'num_val'):
        if getattr(args, name) < 1:
            parser.error(f'--{name.replace("_", "-")} must be positive')
    bad = [r for r in args.ratios if not 0 <= r <= 1 or math.isnan(r)]
    if bad:
        parser.error(f'--ratios must be in [0, 1], got {bad}')
    args.ratios = sorted(set(args.ratios))


# ------------------------------------------------------------ training
def format_value(value) -> str:
    """A --cfg-options value as mmengine's DictAction reads it back."""
    if isinstance(value, (list, tuple)):
        inner = ','.join(format_value(v) for v in value)
        return f'[{inner}]' if isinstance(value, list) else f'({inner})'
    return str(value)


def common_options(args) -> list:
    """--cfg-options of every training run: data root and batch size."""
    opts = [f'{loader}.dataset.data_root={args.data_root}'
            for loader in ('train_dataloader', 'val_dataloader',
                           'test_dataloader')]
    if args.batch_size:
        opts.append(f'train_dataloader.batch_size={args.batch_size}')
    if args.num_workers is not None:
        for loader in ('train_dataloader', 'val_dataloader',
                       'test_dataloader'):
            opts += [f'{loader}.num_workers={args.num_workers}',
                     f'{loader}.persistent_workers={args.num_workers > 0}']
    return opts


def row_options(args) -> list:
    """--cfg-options of the rows' runs: the common ones and the tool's
    --cfg-options."""
    return common_options(args) + [
        f'{k}={format_value(v)}' for k, v in (args.cfg_options or {}).items()]


def schedule_options(iters) -> list:
    """The demo's schedule (linear warm-up, then poly) at ``iters``."""
    if not iters:
        return []
    warmup = max(1, min(20, iters // 5))
    return [f'train_cfg.max_iters={iters}', f'train_cfg.val_interval={iters}',
            f'default_hooks.checkpoint.interval={iters}',
            f'param_scheduler.0.end={warmup}',
            f'param_scheduler.1.begin={warmup}',
            f'param_scheduler.1.end={iters}']


@contextmanager
def threads_per_job(jobs: int):
    """With several training processes at a time, each gets its share of
    the cores (OMP_NUM_THREADS of the processes started meanwhile, unless
    set)."""
    if jobs == 1 or 'OMP_NUM_THREADS' in os.environ:
        yield
        return
    os.environ['OMP_NUM_THREADS'] = str(max(1, (os.cpu_count() or 1) //
                                            jobs))
    try:
        yield
    finally:
        del os.environ['OMP_NUM_THREADS']


def run_parallel(jobs: int, tasks: list) -> dict:
    """Run ``(key, callable)`` tasks, at most ``jobs`` at a time (threads
    that each wait on a training process); their results by key."""
    if jobs == 1:
        return {key: task() for key, task in tasks}
    with ThreadPoolExecutor(jobs) as pool:
        futures = [(key, pool.submit(task)) for key, task in tasks]
        return {key: future.result() for key, future in futures}


def trained_config(work: str, config: str) -> str:
    """The config tools/train.py dumped into the run's work dir (the row's
    config with the options it trained with)."""
    dumped = osp.join(work, osp.basename(config))
    if not osp.isfile(dumped):
        sys.exit(f'error: {dumped} is missing: the run in {work} did not '
                 'finish (run again with --retrain)')
    return dumped


def trained_ratio(checkpoint: str) -> float:
    """The ``trained_ratio`` a selective checkpoint carries."""
    state = torch.load(checkpoint, map_location='cpu', weights_only=False)
    value = state['state_dict'].get('backbone.mask_head.trained_ratio')
    if value is None:
        sys.exit(f'error: {checkpoint} has no backbone.mask_head.'
                 'trained_ratio: not a selective checkpoint')
    return float(value)


# ---------------------------------------------------------- evaluation
def inspect_rows(args) -> dict:
    """Build every row's model once (no data) and read its components; a
    config that builds no selective model stops here."""
    rows = {}
    for config in args.configs:
        try:
            model, _ = build_segmentor(config, cfg_options=args.cfg_options)
            comp = model_components(model)
        except Exception as err:  # a config of another kind of model
            if option_error(err) or argument_error(err):
                raise  # a setting a class refuses: run_cli names it
            sys.exit(f'error: {config} is not a selective down-sampling '
                     f'config: {err}')
        letter = letter_row(comp)
        name = letter['row'] if letter else \
            osp.splitext(osp.basename(config))[0]
        if name in rows:
            name = osp.splitext(osp.basename(config))[0]
        rows[name] = dict(config=config, components=comp, letter=letter)
    return rows


def evaluate_own(model, batches, meta, size) -> dict:
    """The checkpoint's own test-time rule, as tools/test.py evaluates it:
    mIoU, ds ratio and MACs (backbone; mask head and pooling at the run's
    size and at the letter's)."""
    head = model.backbone.mask_head
    head.threshold = None
    own = evaluate(model, batches, meta, METRICS)
    run = model_macs(model, size, [own['ds_ratio']])
    ref = model_macs(model, LETTER_SHAPE, [own['ds_ratio']])
    return dict(
        mIoU=own['mIoU'], ds_ratio=own['ds_ratio'],
        backbone_gmacs=run['backbone'] / 1e9,
        mask_head_macs=run['mask_head'], pooling_macs=run['pooling'],
        mask_head_macs_ref=ref['mask_head'], pooling_macs_ref=ref['pooling'],
        rule=head.decision_rule())


def sweep(model, batches, meta, size, ratios, matched) -> dict:
    """mIoU and cost with an explicit test-time threshold set, on this
    model's P(down-sample) of the val cells, for each of ``ratios`` and
    for the ``matched`` ratio. Where tied probabilities keep every
    threshold more than RATIO_TOL from a ratio, that point is measured with
    the per-image top-k rule at the ratio instead (``rule``)."""
    head = model.backbone.mask_head
    probs = mask_probabilities(model, batches)
    tie, tied = largest_tie(probs)
    points = {}
    for ratio in sorted(set(ratios) | {matched}):
        head.threshold = threshold_for_ratio(probs, ratio)
        m = evaluate(model, batches, meta, METRICS)
        point = dict(ratio=ratio, threshold=head.threshold,
                     threshold_ds_ratio=m['ds_ratio'], rule='threshold')
        if abs(m['ds_ratio'] - ratio) > RATIO_TOL:
            head.threshold = None
            with fixed_ratio_rule(head, ratio):
                m = evaluate(model, batches, meta, METRICS)
            point['rule'] = 'top-k per image'
        point.update(mIoU=m['mIoU'], ds_ratio=m['ds_ratio'],
                     backbone_gmacs=model_macs(model, size, [m['ds_ratio']])[
                         'backbone'] / 1e9)
        points[ratio] = point
    head.threshold = None  # back to the checkpoint's own rule
    return dict(sweep=[points[r] for r in ratios], matched=points[matched],
                largest_tie=dict(p=tie, fraction=tied))


def verdict(rows: dict, runs: dict, dense: dict, seeds: list,
            matched: dict) -> str:
    names = list(rows)
    lines = [f'spread: mean ± half-range over {len(seeds)} seed(s) '
             f'{seeds}; a difference counts when the two intervals do not '
             'overlap.']
    if len(seeds) < 2:
        lines.append('one seed: no spread, so no difference can be called '
                     'real.')
    for key, label in (('mIoU', 'own test-time rule'),
                       ('matched_mIoU', f'same ratio ({matched["label"]})')):
        for c in compare_rows(rows, key):
            a, b = rows[c['first']][key], rows[c['second']][key]
            lines.append(
                f'mIoU, {label}: {c["second"]} - {c["first"]} = '
                f'{c["difference"]:+.2f} ({format_spread(b)} vs '
                f'{format_spread(a)})' + (
                    '.' if not has_spread(a, b) else
                    ': larger than the seed spread.' if c['beyond_spread']
                    else ': within the seed spread.'))
    for name in names:
        r = rows[name]
        lines.append(
            f'{name}: ds ratio {format_spread(r["ds_ratio"], 3)} on the val '
            f'images (own rule), {format_spread(r["trained_ratio"], 3)} at '
            'the end of training'
            + ('' if r['components']['loss'] != 'target' else
               f'; trained with target {format_spread(r["target"], 3)}'))
    for name in names:
        for run in runs[name]:
            moved = [p for p in run['sweep'] + [run['matched']]
                     if p['rule'] != 'threshold']
            if moved:
                tie = run['largest_tie']
                asked = ', '.join(sorted({f'{p["ratio"]:.3g}'
                                          for p in moved}))
                lines.append(
                    f'{name} seed {run["seed"]}: {tie["fraction"]:.1%} of '
                    f'the val cells share P(down-sample) = {tie["p"]:.4g}, '
                    f'so no threshold reaches s = {asked} (within '
                    f'{RATIO_TOL}); measured there with the per-image top-k '
                    'rule (ties by raster order, as the own rule).')
    base = names[0]
    base_ref = rows[base]['mask_head_macs_ref'] + \
        rows[base]['pooling_macs_ref']
    for name in names[1:]:
        r = rows[name]
        ours = (r['mask_head_macs_ref'] + r['pooling_macs_ref']) / \
            base_ref - 1
        text = f'mask head + pooling MACs, {name} vs {base}: {ours:+.1%}'
        la, lb = rows[base]['letter'], r['letter']
        if la and lb:
            said = lb['mask_head_flops'] / la['mask_head_flops'] - 1
            text += f' (letter: {said:+.1%})'
        lines.append(text + '.')
    letter = [n for n in names if rows[n]['letter']]
    for name in letter[1:]:
        first = letter[0]
        said = 100 * (rows[name]['letter']['mIoU'] -
                      rows[first]['letter']['mIoU'])
        own, same = (rows[name][k]['mean'] - rows[first][k]['mean']
                     for k in ('mIoU', 'matched_mIoU'))
        lines.append(f'letter: {name} - {first} = {said:+.0f} mIoU points; '
                     f'here {own:+.2f} (own rule), {same:+.2f} at the same '
                     'ratio.')
    os8, os16 = dense['OS8'], dense['OS16']
    lines.append(
        f'dense references: OS8 {os8["mIoU"]:.2f} mIoU at '
        f'{os8["backbone_gmacs"]:.3f} backbone GMACs, OS16 '
        f'{os16["mIoU"]:.2f} at {os16["backbone_gmacs"]:.3f}; every row was '
        'fine-tuned from this OS8 checkpoint, so it trained longer than OS8 '
        '(the s=0.00 points: every cell at full resolution).')
    return '\n'.join(lines)


def main(argv=None):
    args = parse_args(argv)
    rows = inspect_rows(args)
    os.makedirs(args.work_dir, exist_ok=True)
    names = list(rows)
    log(f'rows: {", ".join(names)}; seeds {args.seeds}')
    for name, r in rows.items():
        c = r['components']
        log(f'  {name}: {osp.relpath(r["config"], ROOT)}: '
            f'{c["mask_head_desc"]}, {c["pooling"]} pooling, '
            f'{c["loss"]} sparsity loss')

    # 1. data
    if is_generated(args.data_root, args.num_train, args.num_val,
                    (128, 256), seed=0):
        log(f'data: {args.data_root} already there')
    elif osp.isdir(osp.join(args.data_root, 'leftImg8bit')) and \
            read_record(args.data_root) is None:
        log(f'data: using {args.data_root} as it is (not a data set the '
            'generator wrote: not regenerated)')
    else:
        log(f'data: generating the synthetic data set ({args.num_train} + '
            f'{args.num_val} images of 128x256) in {args.data_root}')
        if not osp.exists(args.data_root) and \
                'synthetic' not in osp.basename(osp.abspath(args.data_root)):
            log(f'data: WARNING: {args.data_root} did not exist, so it now '
                'holds generated street scenes; for real Cityscapes give '
                'the folder that holds leftImg8bit/ and gtFine/')
        generate_with_progress(args.data_root, args.num_train,
                               args.num_val, (128, 256), seed=0)

    # 2. dense references, trained once
    with threads_per_job(args.jobs):
        dense_ckpts = run_parallel(args.jobs, [
            (name, partial(train_or_reuse, name, config,
                           osp.join(args.work_dir, name),
                           common_options(args) +
                           schedule_options(args.dense_iters), args.retrain,
                           log))
            for name, config in (('OS8', args.os8_config),
                                 ('OS16', args.os16_config))])

    # 3. every row per seed, from the OS8 checkpoint: the target-free rows
    # first, then the target rows with the ratio they reached as target
    free_rows = [n for n in names
                 if rows[n]['components']['loss'] != 'target']
    target_rows = [n for n in names if n not in free_rows]
    order = free_rows + target_rows
    trained = {}

    def fine_tune(name, seed):
        r = rows[name]
        options = row_options(args) + schedule_options(args.iters) + [
            f'load_from={dense_ckpts["OS8"]}', f'randomness.seed={seed}']
        target = None
        if r['components']['loss'] == 'target':
            free = [trained[n, seed]['trained_ratio'] for n in free_rows]
            if args.target == 'matched' and free:
                target = round(sum(free) / len(free), 4)
                options.append(f'model.sparsity_loss.target={target}')
            else:
                target = r['components']['loss_target']
        work = osp.join(args.work_dir, f'seed{seed}',
                        osp.splitext(osp.basename(r['config']))[0])
        ckpt = train_or_reuse(f'{name} seed {seed}', r['config'], work,
                              options, args.retrain, log)
        ratio = trained_ratio(ckpt)
        log(f'{name} seed {seed}: trained ratio {ratio:.3f}'
            + ('' if target is None else f' (target {target:.3f})'))
        return dict(seed=seed, checkpoint=ckpt, work_dir=work,
                    trained_ratio=ratio, target=target)

    for stage in (free_rows, target_rows):
        with threads_per_job(args.jobs):
            trained.update(run_parallel(args.jobs, [
                ((name, seed), partial(fine_tune, name, seed))
                for seed in args.seeds for name in stage]))
    runs = {name: [trained[name, seed] for seed in args.seeds]
            for name in names}
    targets = {name: [r['target'] for r in runs[name]] for name in names}

    # 4. evaluation, as tools/test.py
    log('evaluating with mmseg IoUMetric and DownsampleRatioMetric ...')
    dense_models = {}
    dense_configs = dict(OS8=args.os8_config, OS16=args.os16_config)
    cfgs = {}
    for name, ckpt in dense_ckpts.items():
        dense_models[name], cfgs[name] = build_segmentor(
            trained_config(osp.join(args.work_dir, name),
                           dense_configs[name]), ckpt)
    loader = build_test_loader(cfgs['OS8'], args.data_root)
    batches = load_batches(loader)
    meta = loader.dataset.metainfo
    size = tuple(batches[0]['inputs'][0].shape[1:])
    size = (-(-size[0] // 16) * 16, -(-size[1] // 16) * 16)
    dense = {}
    for name, model in dense_models.items():
        m = evaluate(model, batches, meta)
        dense[name] = dict(mIoU=m['mIoU'], checkpoint=dense_ckpts[name],
                           backbone_gmacs=model_macs(model, size)[
                               'backbone'] / 1e9)
        log(f'{name}: mIoU {m["mIoU"]:.2f}, backbone '
            f'{dense[name]["backbone_gmacs"]:.3f} GMACs')

    matched = {}
    for i, seed in enumerate(args.seeds):
        models = {}
        for name in order:
            run = runs[name][i]
            config = trained_config(run['work_dir'], rows[name]['config'])
            models[name], _ = build_segmentor(config, run['checkpoint'])
            comp = model_components(models[name])
            for key in ('mask_head', 'pooling', 'loss'):
                if comp[key] != rows[name]['components'][key]:
                    sys.exit(f'error: {run["checkpoint"]} was trained with '
                             f'{key} {comp[key]!r}, {rows[name]["config"]} '
                             f'builds {rows[name]["components"][key]!r}')
            run.update(evaluate_own(models[name], batches, meta, size),
                       components=comp, config=osp.relpath(config, ROOT))
            log(f'{name} seed {seed}: mIoU {run["mIoU"]:.2f}, ds ratio '
                f'{run["ds_ratio"]:.3f} ({run["rule"]})')
        # the common ratio: the target-free rows' own (all rows' without one)
        free = [runs[n][i]['ds_ratio'] for n in order
                if rows[n]['components']['loss'] != 'target'] or \
            [runs[n][i]['ds_ratio'] for n in order]
        matched[seed] = sum(free) / len(free)
        for name in order:
            log(f'{name} seed {seed}: threshold sweep at s = '
                f'{", ".join(f"{r:g}" for r in args.ratios)} and '
                f'{matched[seed]:.3f} ...')
            runs[name][i].update(sweep(models[name], batches, meta, size,
                                       args.ratios, matched[seed]))
            m = runs[name][i]['matched']
            log(f'{name} seed {seed}: at s = {m["ds_ratio"]:.3f} mIoU '
                f'{m["mIoU"]:.2f}')
        del models

    # 5. aggregate, report
    table_rows = {}
    for name in names:
        agg = aggregate_runs(runs[name])
        agg['target'] = spread([t for t in targets[name] if t is not None])
        # the components the runs trained with (the target: their mean)
        comp = dict(runs[name][0]['components'])
        if comp['loss_target'] is not None:
            comp['loss_target'] = agg['target']['mean']
        table_rows[name] = dict(rows[name], **agg, components=comp)
    ratios = list(matched.values())
    matched_label = f's = {sum(ratios) / len(ratios):.3f}' + (
        ' (mean)' if len(ratios) > 1 else '')
    matched_info = dict(label=matched_label, per_seed=matched)
    table = ablation_table(table_rows, size, LETTER_SHAPE,
                           matched_label=matched_label)
    curves = ablation_curve_lines(table_rows)
    text = verdict(table_rows, runs, dense, args.seeds, matched_info)
    figure = osp.join(args.work_dir, 'ablation.png')
    plot_ablation(table_rows, dense, figure,
                  xlabel=f'backbone GMACs per image ({size[0]}x{size[1]} '
                  'input)',
                  ylabel='mIoU (%) on the val set',
                  title='CAD vs Prop. 1 vs Prop. 2: threshold sweeps '
                  f'(mean ± half-range, {len(args.seeds)} seed'
                  f'{"s" * (len(args.seeds) != 1)})')
    elapsed = time.time() - START
    summary = (f'\n{table}\n\nthreshold sweeps (mIoU, mean ± half-range over '
               f'seeds):\n{curves}\n\n{text}\n\ntotal time '
               f'{elapsed / 60:.1f} min, {torch.get_num_threads()} threads')
    print(summary)
    with open(osp.join(args.work_dir, 'results.json'), 'w') as f:
        json.dump(dict(rows=table_rows, runs=runs, dense=dense,
                       matched=matched_info, seeds=args.seeds,
                       ratios=args.ratios, input_size=size,
                       letter_shape=LETTER_SHAPE, minutes=elapsed / 60,
                       threads=torch.get_num_threads()),
                  f, indent=2, default=float)
    with open(osp.join(args.work_dir, 'results.md'), 'w') as f:
        f.write(f'# mmselds ablation results\n{summary}\n')
    log(f'wrote {figure}, results.json, results.md')
    if any(math.isnan(r['mIoU']['mean']) for r in table_rows.values()):
        sys.exit('error: an mIoU is NaN')


if __name__ == '__main__':
    run_cli(main)
