"""Time the sparse selective 3x3 conv against dense ``F.conv2d``.

For each high-resolution density rho (fraction of full-resolution cells) the
script times, in one run and interleaved, dense ``F.conv2d`` (dilation r) on
the OS8 map and the sparse selective conv on a random mask of that density,
and prints the time ratio next to the FLOPs ratio f(rho) = rho + (1-rho)/4,
the multiply-adds, and the largest difference between the sparse result and
the dense emulation (invariant I3). With every cell at one resolution
(rho = 1 or 0) the sparse conv is one dense conv on the channels-last rows
(path ``uniform``); the rows ``1-1cell`` and ``0+1cell`` (one cell of the
other resolution) time the gather path at the two extremes. Needs torch
and mmselds only (runs on the GPU benchmark machines without mm* packages;
install mmselds, e.g. ``pip install -e .``, and run it from any folder).

Example::

    python tools/analysis_tools/benchmark_ops.py --channels 256 --shape 64 128
"""
import argparse

import torch
import torch.nn.functional as F

from mmselds.analysis.timing import median, time_call, time_interleaved
from mmselds.ops import (CellMask, MixedFeature, random_cell_mask,
                         selective_conv2d)
from mmselds.utils.arguments import fraction, positive_int, torch_device

DENSITY = fraction('a density (fraction of full-resolution cells)')


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--channels', type=positive_int, default=256,
                   help='C in and out')
    p.add_argument('--shape', type=positive_int, nargs=2,
                   default=(64, 128),
                   metavar=('H', 'W'), help='OS8 map size, even (2x2 cells; '
                   'R101 stage 3 of a 512x1024 input: 64 128)')
    p.add_argument('--batch-size', type=positive_int, default=1)
    p.add_argument('--dilation', type=positive_int, default=2,
                   help='OS8 dilation: 1 or even (the OS16 conv runs r/2)')
    p.add_argument('--densities', type=DENSITY, nargs='+',
                   default=(1.0, 0.75, 0.5, 0.25, 0.0),
                   help='high-resolution densities rho, each in [0, 1]')
    p.add_argument('--no-extremes', action='store_true',
                   help='skip the one-cell cases next to rho = 1 and 0')
    p.add_argument('--repeat', type=int, default=9,
                   help='timed runs per case (median); >= 5')
    p.add_argument('--warmup', type=int, default=2)
    p.add_argument('--device', default='cpu', type=torch_device)
    p.add_argument('--threads', type=positive_int, default=None,
                   help='torch CPU threads (default: torch default)')
    p.add_argument('--seed', type=int, default=0)
    return p


def parse_args(argv=None):
    return build_parser().parse_args(argv)


def main(argv=None):
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.repeat < 5:
        parser.error(f'argument --repeat: must be >= 5, got {args.repeat}')
    if args.dilation > 1 and args.dilation % 2:
        parser.error(f'argument --dilation: must be 1 or even (the OS16 '
                     f'conv runs dilation r/2), got {args.dilation}')
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    gen = torch.Generator().manual_seed(args.seed)
    N, C, (H, W), r = args.batch_size, args.channels, args.shape, args.dilation
    try:  # the cell mask's own check: an even map (2x2 cells)
        CellMask(torch.zeros(N, 1, H // 2, W // 2), 'dense').check_feature(
            torch.zeros(()).expand(N, C, H, W), 'the map')
    except ValueError as error:
        parser.error(f'argument --shape: {error}')
    x = torch.randn(N, C, H, W, generator=gen).to(device)
    weight = torch.randn(C, C, 3, 3, generator=gen).to(device) / (3 * C**0.5)

    cases = {'dense': lambda: F.conv2d(x, weight, padding=r, dilation=r)}
    feats, index_ms, max_diff = {}, {}, {}
    cells_per_image = (H // 2) * (W // 2)
    # row key (density, or the label of a one-cell case) -> down-sampled ratio
    ratios = {rho: 1 - rho for rho in args.densities}
    if not args.no_extremes:
        ratios['1-1cell'] = 1 / cells_per_image
        ratios['0+1cell'] = (cells_per_image - 1) / cells_per_image
    densities = {}
    for rho, ratio in ratios.items():
        mask = random_cell_mask(N, H // 2, W // 2, ratio, gen).to(device)
        cells = CellMask(mask, 'sparse')
        densities[rho] = 1 - mask.mean().item()
        index_ms[rho] = time_call(cells.conv_index, r, device=device) * 1e3
        feats[rho] = MixedFeature.from_dense(x, cells)
        cases[rho] = (lambda f=feats[rho]:
                      selective_conv2d(f, weight, dilation=r))

    with torch.no_grad():  # interleaved: noise hits all cases alike
        times = time_interleaved(cases, args.repeat, args.warmup, device)
    med = {k: median(v) for k, v in times.items()}
    with torch.no_grad():  # after timing: keeps the allocator state alike
        for rho, feat in feats.items():
            emulated = selective_conv2d(
                MixedFeature.from_dense(x, CellMask(feat.cells.mask, 'dense')),
                weight, dilation=r).densify()
            max_diff[rho] = (cases[rho]().densify() - emulated).abs().max()

    print(f'device={device} threads={torch.get_num_threads()} '
          f'torch={torch.__version__} N={N} C={C} H x W={H}x{W} '
          f'dilation={r} repeat={args.repeat}')
    dense_macs = N * H * W * C * C * 9
    print(f'dense F.conv2d: {med["dense"] * 1e3:.1f} ms, '
          f'{dense_macs / 1e9:.2f} GMACs')
    print(f'{"rho":>7} {"GMACs":>6} {"sparse ms":>10} {"ratio":>7} '
          f'{"f(rho)":>7} {"target":>7} {"ok":>3} {"path":>7} '
          f'{"index ms":>9} {"|sparse-dense|":>15}')
    ok_all = True
    for rho, density in densities.items():
        ratio = med[rho] / med['dense']
        f = density + (1 - density) / 4
        target = min(f + 0.10, 1.10)
        ok = ratio <= target
        ok_all &= ok
        cells = feats[rho].cells
        macs = (cells.num_low + 4 * cells.num_high) * 9 * C * C
        path = 'gather' if cells.num_low and cells.num_high else 'uniform'
        index = f'{index_ms[rho]:9.2f}' if path == 'gather' else f'{"-":>9}'
        label = rho if isinstance(rho, str) else f'{rho:.2f}'
        print(f'{label:>7} {macs / 1e9:6.2f} {med[rho] * 1e3:10.1f} '
              f'{ratio:7.3f} {f:7.3f} {target:7.3f} '
              f'{"yes" if ok else "NO":>3} {path:>7} '
              f'{index} {max_diff[rho]:15.2e}')
    print('all targets met' if ok_all else 'some targets missed')


if __name__ == '__main__':
    main()
