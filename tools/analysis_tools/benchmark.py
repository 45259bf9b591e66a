"""Latency, throughput and peak memory of a selective segmentor at forced
down-sampling ratios (and its own mask with a checkpoint); with --compare,
mmseg's dense DeepLabV3 OS8 and OS16 with the same backbone, heads and
weights are timed in the same run, cases interleaved, each twice: as mmseg
builds it ("OS8") and in the optimised form a performance-minded user runs
on a CPU ("OS8 opt": every BatchNorm folded into the conv before it,
channels-last weights and input; ``mmselds.analysis.timing.optimise_dense``).
Times are printed as ratios to the optimised OS8 (the baseline of any
speed-up claim) and to the plain OS8, next to the multiply-add ratio.

Example (CPU, the numbers of docs/benchmarks.md)::

    python tools/analysis_tools/benchmark.py \
        configs/selds/deeplabv3-selds-cad_r101-d8_4xb2-80k_cityscapes-\
512x1024.py --shape 512 1024 --ds-ratio 0 0.25 0.5 0.75 1 --repeat 5 \
        --compare --plot docs/benchmark_r101_cpu.png
"""
import argparse
import json
import os.path as osp

import torch
from mmengine.config import DictAction
from mmengine.logging import print_log

import mmselds  # noqa: F401
from mmselds.analysis import model_macs, reference_macs
from mmselds.analysis.plots import plot_ratios
from mmselds.analysis.timing import (dense_twin, inference_fn, median,
                                     optimise_dense, peak_memory,
                                     time_interleaved)
from mmselds.models.backbones import check_input_size
from mmselds.ops import random_cell_mask
from mmselds.utils.arguments import (fraction, output_file, parent_made,
                                     positive_int, summary, torch_device)
from mmselds.utils.launch import run_cli
from mmselds.utils.model_io import build_segmentor


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=summary(__doc__))
    p.add_argument('config')
    p.add_argument('--checkpoint', help='weights; adds a column for the '
                   'model\'s own mask')
    p.add_argument('--shape', type=positive_int, nargs=2,
                   default=(512, 1024), metavar=('H', 'W'))
    p.add_argument('--batch-size', type=positive_int, default=1)
    p.add_argument('--ds-ratio', type=fraction('a down-sampling ratio'),
                   nargs='+', default=(0.0, 0.25, 0.5, 0.75, 1.0))
    p.add_argument('--repeat', type=positive_int, default=5,
                   help='timed rounds (median), after one warm-up round')
    p.add_argument('--compare', action='store_true',
                   help='also time mmseg\'s dense OS8 and OS16 twins')
    p.add_argument('--no-memory', action='store_true',
                   help='skip the peak-memory measurement (tensor memory a '
                   'forward allocates at its peak, from torch\'s memory '
                   'profiler on the CPU, the caching allocator on CUDA)')
    p.add_argument('--device', default='cpu', type=torch_device)
    p.add_argument('--no-cudnn-benchmark', action='store_true',
                   help="on CUDA: leave cuDNN's autotuner off (default: as "
                   "the config's env_cfg.cudnn_benchmark sets it, which "
                   "mmseg's default_runtime turns on and tools/test.py "
                   'runs with)')
    p.add_argument('--threads', type=positive_int,
                   help='torch CPU threads')
    p.add_argument('--out', type=output_file,
                   help='write the results to this JSON file')
    p.add_argument('--plot', type=output_file,
                   help='write time and multiply-add ratios against s to '
                   'this PNG (needs --compare)')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    args = p.parse_args(argv)
    if args.plot and not args.compare:
        p.error('--plot needs --compare (it plots ratios to the dense OS8)')
    try:  # the backbone's own check: an even OS8 map
        check_input_size(args.shape)
    except ValueError as error:
        p.error(f'argument --shape: {error}')
    return args


def cudnn_autotuner(args, cfg):
    """Set cuDNN's autotuner for a CUDA run as the config's runtime sets it
    for tools/train.py and tools/test.py (``env_cfg.cudnn_benchmark``; on
    in mmseg's default_runtime), off with --no-cudnn-benchmark; return the
    setting, or None on the CPU (left as it is). The warm-up round absorbs
    the tuning."""
    if not args.device.startswith('cuda'):
        return None
    on = bool(cfg.get('env_cfg', {}).get('cudnn_benchmark', False)) and \
        not args.no_cudnn_benchmark
    torch.backends.cudnn.benchmark = on
    return on


def build_cases(args):
    """({name: (model, mask or None, macs dict, channels_last)} for every
    case, the config)."""
    model, cfg = build_segmentor(args.config, args.checkpoint,
                                 args.cfg_options, args.device)
    if not hasattr(model.backbone, 'mask_head'):
        raise SystemExit(f'error: {args.config} has no selective '
                         'down-sampling backbone: nothing to time against '
                         'the dense models (for a dense model\'s cost: '
                         'tools/analysis_tools/get_flops.py)')
    size, n = tuple(args.shape), args.batch_size
    h, w = (x // 2 for x in check_input_size(size))  # cells of the OS8 map
    gen = torch.Generator().manual_seed(0)
    cases = {}
    if args.compare:
        refs = reference_macs(model, size)
        for os_ in (8, 16):
            cases[f'OS{os_}'] = (dense_twin(cfg.model, model, os_), None,
                                 refs[f'OS{os_}'], False)
        for os_ in (8, 16):
            cases[f'OS{os_} opt'] = (
                optimise_dense(dense_twin(cfg.model, model, os_)), None,
                refs[f'OS{os_}'], True)
    for s in args.ds_ratio:
        mask = random_cell_mask(n, h, w, s, gen).to(args.device)
        cases[f's={s:g}'] = (model, mask, model_macs(model, size, [s]),
                             False)
    if args.checkpoint:
        x = torch.randn(n, 3, *size, device=args.device)
        inference_fn(model, x, 'backbone')()
        ratio = model.backbone.last_ratio
        cases[f'own (s={ratio:.2f})'] = (
            model, None, model_macs(model, size, [ratio]), False)
    return cases, cfg


def main(argv=None):
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    cases, cfg = build_cases(args)
    autotuner = cudnn_autotuner(args, cfg)
    x = torch.randn(args.batch_size, 3, *args.shape, device=args.device)
    x_cl = x.contiguous(memory_format=torch.channels_last)
    fns = {}
    for name, (model, mask, _, cl) in cases.items():
        for part in ('backbone', 'model'):
            fns[(name, part)] = inference_fn(model, x_cl if cl else x, part,
                                             mask)
    print_log(f'timing {len(cases)} cases x 2 parts, {args.repeat} rounds '
              f'after a warm-up round ...', logger='current')
    times = time_interleaved(
        fns, args.repeat, device=args.device,
        progress=lambda msg: print_log(msg, logger='current'))
    memory = {}
    if not args.no_memory:
        for (name, part) in fns:
            m, mask, _, cl = cases[name]
            memory[(name, part)] = peak_memory(
                inference_fn(m, x_cl if cl else x, part, mask),
                args.device) / 2**20
            print_log(f'peak memory {name} {part}: '
                      f'{memory[(name, part)]:.0f} MiB', logger='current')
    base = 'OS8 opt' if 'OS8 opt' in cases else None
    rows = []
    for name, (_, _, macs, _) in cases.items():
        row = dict(case=name, backbone_ms=median(times[(name, 'backbone')])
                   * 1e3, model_ms=median(times[(name, 'model')]) * 1e3,
                   backbone_gmacs=macs['backbone'] / 1e9,
                   model_gmacs=macs['total'] / 1e9,
                   backbone_peak_mib=memory.get((name, 'backbone')),
                   model_peak_mib=memory.get((name, 'model')))
        row['images_per_s'] = args.batch_size / row['model_ms'] * 1e3
        rows.append(row)
    if base:
        b = next(r for r in rows if r['case'] == base)
        plain = next(r for r in rows if r['case'] == 'OS8')
        for r in rows:
            for part in ('backbone', 'model'):
                # *_time_ratio: to the optimised dense OS8
                r[f'{part}_time_ratio'] = r[f'{part}_ms'] / b[f'{part}_ms']
                r[f'{part}_time_ratio_plain'] = r[f'{part}_ms'] / \
                    plain[f'{part}_ms']
                r[f'{part}_flops_ratio'] = r[f'{part}_gmacs'] / \
                    b[f'{part}_gmacs']
    dev = f'{torch.cuda.get_device_name()}, cuDNN autotuner ' + (
        'on' if autotuner else 'off') if autotuner is not None else \
        f'cpu, {torch.get_num_threads()} threads'
    print(f'\n{osp.basename(args.config)}: input {args.shape[0]}x'
          f'{args.shape[1]}, batch {args.batch_size}, {dev}, torch '
          f'{torch.__version__}, median of {args.repeat} interleaved rounds')
    head = ['case', 'backbone ms', 'model ms', 'img/s', 'bb peak MiB',
            'model peak MiB']
    if base:
        head += ['bb time/OS8 opt', 'bb time/OS8', 'bb MACs/OS8',
                 'model time/OS8 opt', 'model time/OS8', 'model MACs/OS8']
    print('| ' + ' | '.join(head) + ' |')
    print('|' + '---|' * len(head))
    for r in rows:
        cells = [r['case'], f'{r["backbone_ms"]:.1f}', f'{r["model_ms"]:.1f}',
                 f'{r["images_per_s"]:.2f}'] + [
                     '-' if r[k] is None else f'{r[k]:.0f}'
                     for k in ('backbone_peak_mib', 'model_peak_mib')]
        if base:
            cells += [f'{r[k]:.3f}' for k in (
                'backbone_time_ratio', 'backbone_time_ratio_plain',
                'backbone_flops_ratio', 'model_time_ratio',
                'model_time_ratio_plain', 'model_flops_ratio')]
        print('| ' + ' | '.join(cells) + ' |')
    if args.plot:
        plot_ratios(rows, parent_made(args.plot),
                    f'{osp.basename(args.config)}, {args.shape[0]}x'
                    f'{args.shape[1]}, batch {args.batch_size}, {dev}')
    if args.out:
        with open(parent_made(args.out), 'w') as f:
            json.dump(dict(config=args.config, shape=args.shape,
                           batch_size=args.batch_size, device=dev,
                           cudnn_benchmark=autotuner,
                           repeat=args.repeat, rows=rows), f, indent=2)


if __name__ == '__main__':
    run_cli(main)
