"""GPU benchmark of sparse selective execution with the Triton kernels.

Needs torch and Triton only (no mm* package, installs nothing): it imports
``mmselds.ops``, which imports torch alone, from the installed package or,
if mmselds is not installed, from the checkout this file lies in.

1. **Correctness first**, on the GPU: the Triton kernels (3x3 gather at the
   R101 stage-3 and stage-4 shapes, the 1x1 matmul) against the float64
   PyTorch reference on the same rounded inputs, and the selective conv and
   the selective stages 3-4 (sparse, Triton) against the dense emulation;
   float32 with TF32 off here. A failed check is printed ``FAIL`` and the
   script exits with status 1 after timing.
2. **Op**: the selective 3x3 conv at the R101 stage-3 (C = 256, dilation 2)
   and stage-4 (C = 512, dilation 4) shapes on the 128 x 256 OS8 map of a
   1024 x 2048 input, at densities (fraction of full-resolution cells) 1,
   0.5, 0.25 and 0: dense cuDNN conv (channels-last, same dtype) against
   the public op ``selective_conv2d`` with the Triton backend (source rows,
   pooling and kernel; index table cached, as within a forward), the
   Triton kernel alone, and the op with the PyTorch reference backend;
   plus the time to build the mask layout and index table. Densities 1
   and 0 take the uniform path (one cuDNN conv); the kernel column still
   runs the gather kernel on that mask's index table.
3. **Stages**: ResNet-101 stages 3 (23 bottlenecks, 1024 out, dilation 2)
   and 4 (3 bottlenecks, 2048 out, dilation 4), built from plain torch
   modules with random weights and eval BatchNorm; dense OS8 and dense OS16
   (cuDNN, channels-last, BatchNorm folded; OS16: the stage-3 entrance with
   stride 2, dilations halved) against the selective stages
   (``mmselds.ops.run_residual_block``, BatchNorm folded, ``stride``
   pooling, stage-3 entrance as in the OS16 network) at down-sampling
   ratios s = 0, 0.5, 0.8, 1, with the Triton backend and with the
   reference. A selective
   forward includes building the mask layout and index tables and
   densifying the stage-4 output.
4. **Head**: DeepLabV3's ASPP head (2048 in, 512 channels, rates 1, 12,
   24, 36, image pool, 3x3 bottleneck, 19 classes), alone on a stage-4
   output and after stages 3-4 (the whole model but the stem, stages 1-2
   and the mask head): the dense OS8 head and the OS16 one (rates halved)
   against the selective head (``mmselds.ops.run_aspp``, as
   ``SelDSASPPHead`` runs it), which reads the stages' mixed feature.
   Checked first against the dense heads at s = 0 and 1 and the dense
   emulation at s = 0.5.
5. **Train**: one training step (forward and backward, train-mode
   BatchNorm) of the same stages on 512 x 1024 crops (a 64 x 128 OS8 map,
   batch 2): dense OS8 against the selective stages in dense emulation
   (how the models train) at s = 0.5, float32 and AMP (float16 autocast
   with a gradient scaler); checked first (AMP gradients finite and close
   in direction to float32's), then timed, with the peak memory.
6. **Tune**: the Triton gather kernel alone at the stage-3 and stage-4
   shapes (density 0.5, the largest batch, float16) under a few tile
   configurations against the default heuristic, for tuning it.

Times are medians of CUDA-event timings after warm-up, batch 1 and 8,
float16 and float32 (TF32 as torch is set: cuDNN convs and the Triton
kernels follow ``torch.backends.cudnn.allow_tf32``, on by default; the
reference's matmuls follow ``torch.backends.cuda.matmul.allow_tf32``;
``--no-tf32`` turns both off) and cuDNN's autotuner on
(``torch.backends.cudnn.benchmark``, as mmseg's ``default_runtime`` sets
``env_cfg.cudnn_benchmark``: the dense baseline a user runs; the warm-up
runs absorb the tuning; ``--no-cudnn-benchmark`` leaves it off). The
table is printed and written to
``--out``, rewritten after each part (a run cut short keeps the parts it
finished).

Example (from the repository root)::

    python tools/analysis_tools/benchmark_gpu.py --out benchmark_gpu.md

``--smoke`` runs every part on tiny shapes on the CPU, the kernels in
Triton's interpreter (for tests; its times mean nothing).
"""
import argparse
import contextlib
import datetime
import os.path as osp
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

try:
    from mmselds.ops import (CellMask, MixedFeature, fold_batch_norm, kernels,
                             random_cell_mask, run_aspp, run_layers,
                             run_residual_block, selective_conv2d)
except ModuleNotFoundError as err:  # a checkout (GPU machines): no install
    if err.name != 'mmselds':
        raise
    sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(
        osp.abspath(__file__)))))
    from mmselds.ops import (CellMask, MixedFeature, fold_batch_norm, kernels,
                             random_cell_mask, run_aspp, run_layers,
                             run_residual_block, selective_conv2d)
from mmselds.ops.functional import low_res_dilation
from mmselds.ops.kernels import torch_ref, triton_backend

DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16,
          'fp32': torch.float32}
# |got - ref| <= tol * (1 + |ref|) on outputs of unit scale: the output's
# rounding (float32 accumulation); TF32 float32 is checked with TF32 off
TOL = {torch.float16: 2e-3, torch.bfloat16: 1e-2, torch.float32: 1e-5}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--out', default='benchmark_gpu.md',
                   help='file the table is written to')
    p.add_argument('--batch-sizes', type=int, nargs='+', default=(1, 8))
    p.add_argument('--dtypes', nargs='+', default=('fp16', 'fp32'),
                   choices=sorted(DTYPES))
    p.add_argument('--densities', type=float, nargs='+',
                   default=(1.0, 0.5, 0.25, 0.0),
                   help='op: fraction of full-resolution cells')
    p.add_argument('--ratios', type=float, nargs='+',
                   default=(0.0, 0.5, 0.8, 1.0),
                   help='stages: down-sampling ratios s')
    p.add_argument('--size', type=int, nargs=2, default=(128, 256),
                   metavar=('H', 'W'),
                   help='OS8 map (128 256: a 1024 x 2048 input)')
    p.add_argument('--repeat', type=int, default=10,
                   help='timed runs per case (median)')
    p.add_argument('--warmup', type=int, default=3)
    p.add_argument('--parts', nargs='+',
                   default=('op', 'stages', 'head', 'train', 'tune'),
                   choices=('op', 'stages', 'head', 'train', 'tune'),
                   help='what to time (the correctness checks always run)')
    p.add_argument('--train-size', type=int, nargs=2, default=(64, 128),
                   metavar=('H', 'W'),
                   help='train: OS8 map (64 128: a 512 x 1024 crop)')
    p.add_argument('--train-batch', type=int, default=2)
    p.add_argument('--no-reference', action='store_true',
                   help='do not time the PyTorch reference backend')
    p.add_argument('--no-tf32', action='store_true',
                   help='float32 without TF32 (cuDNN, matmul, Triton)')
    p.add_argument('--seed', type=int, default=0)
    p.add_argument('--no-cudnn-benchmark', action='store_true',
                   help="do not autotune cuDNN's algorithms (mmseg's "
                   'configs do: env_cfg.cudnn_benchmark=True)')
    p.add_argument('--smoke', action='store_true',
                   help='tiny shapes on the CPU, kernels in the Triton '
                   'interpreter (a test of the script)')
    return p.parse_args(argv)


# ------------------------------------------------------------ utilities
class Bench:
    """Device, backends and timer of one run."""

    def __init__(self, args):
        self.smoke = args.smoke
        self.device = torch.device('cpu' if args.smoke else 'cuda')
        self.warmup = 0 if args.smoke else args.warmup
        self.repeat = 1 if args.smoke else args.repeat
        # Triton on any GPU, also below the tensor-core capability where
        # the library's backend would take the reference's kernels
        self.triton = triton_backend.build_backend(interpret=args.smoke,
                                                   min_capability=None)
        self.failed = False
        # raw timings for the targets: ('op', shape, batch, dtype, density)
        # -> (dense ms, op ms); ('stages', batch, dtype, s) -> (OS8 ms,
        # OS16 ms, selective ms)
        self.results = {}
        # the AMP dtype (float16 on the GPU; CPU autocast for --smoke)
        self.amp_name = 'bf16' if args.smoke else 'fp16'
        self.amp_dtype = DTYPES[self.amp_name]

    @contextlib.contextmanager
    def backend(self, name):
        """Run sparse kernels of the device on ``'triton'`` or ``'ref'``."""
        backend = self.triton if name == 'triton' else kernels.TORCH_REF
        old = kernels.register_backend(self.device.type, backend,
                                       replace=True)
        try:
            yield
        finally:
            kernels.register_backend(self.device.type, old, replace=True)

    def sync(self):
        if self.device.type == 'cuda':
            torch.cuda.synchronize()

    def time(self, fn):
        """Median milliseconds of ``fn()`` after warm-up."""
        for _ in range(self.warmup):
            fn()
        self.sync()
        times = []
        for _ in range(self.repeat):
            if self.device.type == 'cuda':
                start = torch.cuda.Event(enable_timing=True)
                end = torch.cuda.Event(enable_timing=True)
                start.record()
                fn()
                end.record()
                end.synchronize()
                times.append(start.elapsed_time(end))
            else:
                t = time.perf_counter()
                fn()
                times.append((time.perf_counter() - t) * 1e3)
        return statistics.median(times)

    def verdict(self, err, tol):
        ok = err <= tol
        self.failed |= not ok
        return 'ok' if ok else 'FAIL'


@contextlib.contextmanager
def tf32(enabled):
    old = (torch.backends.cudnn.allow_tf32,
           torch.backends.cuda.matmul.allow_tf32)
    torch.backends.cudnn.allow_tf32 = enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    try:
        yield
    finally:
        (torch.backends.cudnn.allow_tf32,
         torch.backends.cuda.matmul.allow_tf32) = old


def rel_err(got, ref):
    """max |got - ref| / (1 + |ref|)."""
    got, ref = got.double(), ref.double()
    return ((got - ref).abs() / (1 + ref.abs())).max().item()


def md_table(header, rows):
    lines = ['| ' + ' | '.join(header) + ' |',
             '|' + '---|' * len(header)]
    lines += ['| ' + ' | '.join(str(c) for c in r) + ' |' for r in rows]
    return '\n'.join(lines)


def fmt(ms):
    return '-' if ms is None else f'{ms:.3f}' if ms < 10 else f'{ms:.1f}'


def conv_source(feat, dilation):
    """(source rows, index table) of the gather of a sparse 3x3 conv on a
    ``stride``-pooled feature, as ``selective_conv2d`` builds them: the
    rows themselves (a high cell's low value is its top-left row; index R
    reads zeros)."""
    return feat.data, feat.cells.conv_index(dilation, pooled_rows=False)


# ------------------------------------------------- R101 stages 3 and 4
class Bottleneck(nn.Module):
    """mmseg's ResNetV1c bottleneck (stride on the 3x3 conv), eval."""

    def __init__(self, c_in, mid, c_out, dilation, downsample):
        super().__init__()
        bn = nn.BatchNorm2d
        self.main = nn.Sequential(
            nn.Conv2d(c_in, mid, 1, bias=False), bn(mid), nn.ReLU(),
            nn.Conv2d(mid, mid, 3, padding=dilation, dilation=dilation,
                      bias=False), bn(mid), nn.ReLU(),
            nn.Conv2d(mid, c_out, 1, bias=False), bn(c_out))
        self.downsample = nn.Sequential(
            nn.Conv2d(c_in, c_out, 1, bias=False), bn(c_out)) \
            if downsample else None

    def forward(self, x):
        short = x if self.downsample is None else self.downsample(x)
        return F.relu(self.main(x) + short)

    def dense_folded(self, os16=False, entrance=False):
        """The block as folded convs for a dense baseline: OS8, or with
        ``os16`` the block of the OS16 network (dilations halved as
        ``low_res_dilation``; with ``entrance`` the stage's first block,
        whose 3x3 conv and shortcut have stride 2)."""
        m, stride = self.main, 2 if os16 and entrance else 1
        return (folded_conv(m[0], m[1]),
                folded_conv(m[3], m[4], os16, stride),
                folded_conv(m[6], m[7]),
                folded_conv(*self.downsample, stride=stride)
                if self.downsample else None)


def folded_conv(conv, norm=None, os16=False, stride=1):
    """``norm(conv(.))`` as one channels-last conv of a dense baseline; with
    ``os16`` the OS16 network's (3x3 dilation halved as
    ``low_res_dilation``)."""
    w, b = (conv.weight, conv.bias) if norm is None else \
        fold_batch_norm(conv.weight, conv.bias, norm)
    k, d = conv.kernel_size[0], conv.dilation[0]
    if os16 and k == 3:
        d = low_res_dilation(d)
    new = nn.Conv2d(conv.in_channels, conv.out_channels, k, stride=stride,
                    padding=d if k == 3 else 0, dilation=d).to(w)
    new.weight.data.copy_(w)
    if b is None:
        new.bias.data.zero_()
    else:
        new.bias.data.copy_(b)
    return new.to(memory_format=torch.channels_last)


def randomize(module, gen):
    """Kaiming-normal conv weights, small biases; BatchNorm with random
    statistics and affine parameters near 1 and 0."""
    for m in module.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            m.weight.data.normal_(0, (2 / fan_in)**0.5, generator=gen)
            if m.bias is not None:
                m.bias.data.normal_(0, 0.1, generator=gen)
        elif isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.1, generator=gen)
            m.running_var.uniform_(0.5, 1.5, generator=gen)
            m.weight.data.uniform_(0.5, 1, generator=gen)
            m.bias.data.normal_(0, 0.1, generator=gen)
    return module


def make_stage(c_in, mid, c_out, blocks, dilation, gen):
    """A ResNetV1c stage at OS8 (contract_dilation: the first block has
    dilation/2), random weights (Kaiming), eval BatchNorm with random
    statistics and small last-BN scales (activations stay of unit scale
    through 23 blocks, in float16 too)."""
    layers = []
    for i in range(blocks):
        d = max(dilation // 2, 1) if i == 0 else dilation
        blk = randomize(Bottleneck(c_in if i == 0 else c_out, mid, c_out, d,
                                   i == 0), gen)
        last = blk.main[7]
        last.weight.data.uniform_(0.05, 0.2, generator=gen)
        if blk.downsample is not None:
            blk.downsample[1].weight.data.uniform_(0.5, 1, generator=gen)
        layers.append(blk)
    return nn.Sequential(*layers).eval()


def dense_forward(folded, x):
    for c1, c2, c3, ds in folded:
        y = c3(F.relu(c2(F.relu(c1(x)))))
        x = F.relu(y + (ds(x) if ds is not None else x))
    return x


def selective_stages(stages, x, mask, execution):
    """Stages 3-4 under ``mask``, block by block through
    ``run_residual_block`` as the backbone runs them: the stage-3 entrance
    takes the dense stage-2 map (``stride`` pooling: low cells get the OS16
    network's stride-2 conv and shortcut), every later layer the mixed
    feature, and each block's shortcut add and ReLU are the epilogue of its
    last conv; returns the stage-4 output, a ``MixedFeature``."""
    cells = CellMask(mask, execution)
    feat = x
    for stage in stages:
        for blk in stage:
            feat = run_residual_block(feat, [blk.main], blk.downsample, cells)
    return feat


def selective_forward(stages, x, mask, execution):
    """The densified stage-4 output of :func:`selective_stages`."""
    return selective_stages(stages, x, mask, execution).densify()


# ------------------------------------------------------- the ASPP head
class AsppHead(nn.Module):
    """mmseg's ``ASPPHead`` of DeepLabV3 (eval; dropout is the identity):
    image pool (global average, 1x1 conv), a 1x1 and three 3x3 atrous
    branches, a 3x3 bottleneck on the concatenation (conv + BN + ReLU each)
    and the 1x1 classifier."""

    def __init__(self, c_in, c, dilations, num_classes, gen):
        super().__init__()

        def block(c_in, k, d=1):
            return nn.Sequential(
                nn.Conv2d(c_in, c, k, padding=0 if k == 1 else d,
                          dilation=d, bias=False), nn.BatchNorm2d(c),
                nn.ReLU())
        self.image_pool = block(c_in, 1)
        self.branches = nn.ModuleList(block(c_in, 1 if d == 1 else 3, d)
                                      for d in dilations)
        self.bottleneck = block(c * (len(dilations) + 1), 3)
        self.conv_seg = nn.Conv2d(c, num_classes, 1)
        randomize(self, gen)
        self.eval()

    def selective(self, feat):
        """Logits (densified at OS8) of the head on a mixed feature, as
        ``SelDSASPPHead`` runs it (``mmselds.ops.run_aspp``: the image pool
        over the densified map, rate r at full-resolution cells and r/2 at
        down-sampled ones, ``stride`` pooling)."""
        out = run_aspp(feat.new(feat.data, 'stride'), self.image_pool,
                       self.branches, self.bottleneck)
        return run_layers(out, [self.conv_seg]).densify()

    def dense_folded(self, os16=False):
        """(image pool, branches, bottleneck, classifier) as folded
        channels-last convs of the dense head; with ``os16`` the OS16
        network's (rates halved)."""
        return (folded_conv(*self.image_pool[:2]),
                [folded_conv(*b[:2], os16) for b in self.branches],
                folded_conv(*self.bottleneck[:2]), folded_conv(self.conv_seg))


def dense_head(folded, x):
    """The dense head's logits on ``x`` from ``AsppHead.dense_folded``."""
    pool, branches, bottleneck, classifier = folded
    n, _, h, w = x.shape
    outs = [F.relu(pool(x.mean((2, 3), keepdim=True))).expand(-1, -1, h, w)]
    outs += [F.relu(b(x)) for b in branches]
    cat = torch.empty(n, sum(o.shape[1] for o in outs), h, w,
                      dtype=x.dtype, device=x.device,
                      memory_format=torch.channels_last)
    return classifier(F.relu(bottleneck(torch.cat(outs, 1, out=cat))))


# ----------------------------------------------------------------- parts
def op_shapes(args):
    if args.smoke:
        return [('stage 3', 8, 2), ('stage 4', 16, 4)]
    return [('stage 3', 256, 2), ('stage 4', 512, 4)]


def conv_case(bench, n, c, size, gen, dtype):
    x = torch.randn(n, c, *size, generator=gen).to(bench.device, dtype)
    x = x.contiguous(memory_format=torch.channels_last)
    w = (torch.randn(c, c, 3, 3, generator=gen) / (3 * c**0.5)).to(
        bench.device, dtype).contiguous(memory_format=torch.channels_last)
    b = torch.randn(c, generator=gen).to(bench.device, dtype)
    return x, w, b


def check_ops(bench, args, gen, rows):
    """Kernels vs the float64 reference, selective conv vs dense emulation
    (TF32 off)."""
    from mmselds.ops.kernels import triton_kernels as tk
    h, w = args.size
    interpret = args.smoke
    with tf32(False):
        for name, c, r in op_shapes(args):
            for dname in args.dtypes:
                dtype = DTYPES[dname]
                x, wt, b = conv_case(bench, 1, c, (h, w), gen, dtype)
                mask = random_cell_mask(1, h // 2, w // 2, 0.5,
                                        gen).to(bench.device)
                cells = CellMask(mask, 'sparse')
                feat = MixedFeature.from_dense(x, cells)
                src, index = conv_source(feat, r)
                d = torch.float64
                got = tk.gather_linear(src, index, wt, b, interpret=interpret)
                ref = torch_ref.gather_linear(src.to(d), index, wt.to(d),
                                              b.to(d))
                err = rel_err(got, ref)
                rows.append((f'gather 3x3 {name} (C={c}, r={r})', dname,
                             f'{err:.2e}', TOL[dtype],
                             bench.verdict(err, TOL[dtype])))
                w1 = wt[:, :, 1, 1]
                got = tk.rows_linear(feat.data, w1, b, interpret=interpret)
                ref = torch_ref.rows_linear(feat.data.to(d), w1.to(d),
                                            b.to(d))
                err = rel_err(got, ref)
                rows.append((f'rows 1x1 {name} (C={c})', dname,
                             f'{err:.2e}', TOL[dtype],
                             bench.verdict(err, TOL[dtype])))
                with bench.backend('triton'):
                    sparse = selective_conv2d(feat, wt, b, r).densify()
                dense = selective_conv2d(
                    MixedFeature.from_dense(x, CellMask(mask, 'dense')),
                    wt, b, r).densify()
                err, tol = rel_err(sparse, dense), 4 * TOL[dtype]
                rows.append((f'selective_conv2d {name}: sparse vs dense',
                             dname, f'{err:.2e}', tol,
                             bench.verdict(err, tol)))


def stage_configs(args):
    if args.smoke:  # (c_in, mid, c_out, blocks, dilation)
        return [(16, 8, 32, 2, 2), (32, 16, 64, 2, 4)]
    return [(512, 256, 1024, 23, 2), (1024, 512, 2048, 3, 4)]


def build_stages(bench, args, gen):
    stages = [make_stage(*cfg, gen) for cfg in stage_configs(args)]
    return [s.to(bench.device) for s in stages]


def folded_blocks(stages, os16=False):
    """The folded blocks of the dense OS8 network, or of the OS16 one (the
    stage-3 entrance strided)."""
    return [blk.dense_folded(os16, entrance=os16 and i == j == 0)
            for i, stage in enumerate(stages) for j, blk in enumerate(stage)]


def max_rel_err(got, ref):
    """max |got - ref| / max |ref| (float32 ``ref``)."""
    return (got.float() - ref).abs().max().item() / ref.abs().max().item()


def check_against_dense(bench, args, gen, what, selective, os8, os16, rows,
                        tol=1e-4):
    """``selective(mask, execution)`` (sparse on the Triton backend) ==
    ``os8()`` (dense OS8) at s = 0, the dense emulation at s = 0.5 and
    ``os16()`` (dense OS16, each low cell replicated) at s = 1, float32,
    TF32 off; and at s = 0.5 under autocast (AMP inference: float32
    weights reach the kernels cast) against float32, next to the dense
    emulation's own deviation under the same autocast."""
    h, w = args.size
    with tf32(False), torch.no_grad():
        for s in (0.0, 0.5, 1.0):
            mask = random_cell_mask(1, h // 2, w // 2, s,
                                    gen).to(bench.device)
            with bench.backend('triton'):
                sparse = selective(mask, 'sparse')
            if s == 0:
                ref, name = os8(), 'dense OS8'
            elif s == 1:
                ref = F.interpolate(os16(), scale_factor=2, mode='nearest')
                name = 'dense OS16'
            else:
                ref, name = selective(mask, 'dense'), 'dense emulation'
            err = max_rel_err(sparse, ref)
            rows.append((f'{what} s={s}: sparse vs {name} (max err / max abs '
                         'ref)', 'fp32', f'{err:.2e}', tol,
                         bench.verdict(err, tol)))
        mask = random_cell_mask(1, h // 2, w // 2, 0.5, gen).to(bench.device)
        ref = selective(mask, 'dense')
        with torch.autocast(bench.device.type, dtype=bench.amp_dtype):
            with bench.backend('triton'):
                sparse = selective(mask, 'sparse')
            dense = selective(mask, 'dense')
        err, dense_err = max_rel_err(sparse, ref), max_rel_err(dense, ref)
        tol = 3 * dense_err + 1e-3
        rows.append((f'{what} s=0.5 under autocast: sparse vs float32 '
                     f'(dense emulation: {dense_err:.1e})',
                     f'{bench.amp_name} AMP', f'{err:.2e}',
                     f'{tol:.1e} (3 x dense + 1e-3)',
                     bench.verdict(err, tol)))


def check_stages(bench, args, stages, gen, rows):
    """Selective stages 3-4 against dense OS8, the dense emulation and
    dense OS16 (:func:`check_against_dense`; float32 round-off through 26
    blocks stays below 1e-4)."""
    x = feature_map(bench, args, 1, stage_configs(args)[0][0], gen)
    check_against_dense(
        bench, args, gen, 'stages 3-4',
        lambda mask, ex: selective_forward(stages, x, mask, ex),
        lambda: dense_forward(folded_blocks(stages), x),
        lambda: dense_forward(folded_blocks(stages, os16=True), x), rows)


def head_config(args):
    """(in channels, channels, dilations, classes) of DeepLabV3's head."""
    if args.smoke:
        return (stage_configs(args)[-1][2], 16, (1, 2, 4, 6), 5)
    return (2048, 512, (1, 12, 24, 36), 19)


def build_head(bench, args, gen):
    return AsppHead(*head_config(args), gen).to(bench.device)


def feature_map(bench, args, n, c, gen, dtype=torch.float32, relu=False,
                size=None):
    """A random (n, c, H, W) OS8 map (``size``, default ``args.size``) of
    unit scale, channels-last; with ``relu`` non-negative, as a stage's
    output."""
    h, w = size or args.size
    x = torch.randn(n, c, h, w, generator=gen)
    x = x.relu_() if relu else x
    return x.to(bench.device, dtype).contiguous(
        memory_format=torch.channels_last)


def head_input(bench, args, n, gen, dtype=torch.float32):
    """A stage-4 output, the head's input."""
    return feature_map(bench, args, n, head_config(args)[0], gen, dtype,
                       relu=True)


def check_head(bench, args, head, stages, gen, rows):
    """The selective ASPP head against the dense OS8 head, the dense
    emulation and the dense OS16 head (rates halved;
    :func:`check_against_dense`); stages 3-4 and the head together (the
    mixed feature passed on, never densified) against the dense
    emulation."""
    h, w = args.size
    x = head_input(bench, args, 1, gen)

    def head_on(mask, execution):
        cells = CellMask(mask, execution)
        return head.selective(MixedFeature.from_dense(x, cells))
    check_against_dense(
        bench, args, gen, 'ASPP head', head_on,
        lambda: dense_head(head.dense_folded(), x),
        lambda: dense_head(head.dense_folded(os16=True), x[:, :, ::2, ::2]),
        rows)
    x3 = feature_map(bench, args, 1, stage_configs(args)[0][0], gen)
    mask = random_cell_mask(1, h // 2, w // 2, 0.5, gen).to(bench.device)
    with tf32(False), torch.no_grad():
        with bench.backend('triton'):
            sparse = head.selective(selective_stages(stages, x3, mask,
                                                     'sparse'))
        ref = head.selective(selective_stages(stages, x3, mask, 'dense'))
    err, tol = max_rel_err(sparse, ref), 1e-4
    rows.append(('stages 3-4 + ASPP head s=0.5: sparse vs dense emulation '
                 '(max err / max abs ref)', 'fp32', f'{err:.2e}', tol,
                 bench.verdict(err, tol)))


def to_dtype(folded, dtype):
    """The folded convs of a dense baseline (nested tuples and lists) in
    ``dtype`` (in place)."""
    if isinstance(folded, (tuple, list)):
        return type(folded)(to_dtype(f, dtype) for f in folded)
    return None if folded is None else folded.to(dtype)


def time_head(bench, args, head, stages, gen, rows):
    """The ASPP head alone (on a stage-4 output) and stages 3-4 with the
    head, dense OS8 and OS16 against selective."""
    c_in = stage_configs(args)[0][0]
    heads = {os16: head.dense_folded(os16) for os16 in (False, True)}
    blocks = {os16: folded_blocks(stages, os16) for os16 in (False, True)}
    for n in args.batch_sizes:
        # drawn once a batch size (2 GiB at batch 8), cast for each dtype
        x4_32 = head_input(bench, args, n, gen)
        x3_32 = feature_map(bench, args, n, c_in, gen)
        for dname in args.dtypes:
            dtype = DTYPES[dname]
            sel_head, mods = head.to(dtype), [s.to(dtype) for s in stages]
            dh = {k: to_dtype(v, dtype) for k, v in heads.items()}
            ds = {k: to_dtype(v, dtype) for k, v in blocks.items()}
            x4, x3 = x4_32.to(dtype), x3_32.to(dtype)
            x4_16 = x4[:, :, ::2, ::2].contiguous(
                memory_format=torch.channels_last)

            def head_alone(mask):  # from the rows stage 4 leaves
                rows_ = MixedFeature.from_dense(
                    x4, CellMask(mask, 'sparse')).data
                return lambda: sel_head.selective(MixedFeature(
                    rows_, CellMask(mask, 'sparse')))
            with torch.no_grad():
                time_against_dense(
                    bench, args, gen, n, dname, 'ASPP head',
                    lambda: dense_head(dh[False], x4),
                    lambda: dense_head(dh[True], x4_16), head_alone, rows)
                time_against_dense(
                    bench, args, gen, n, dname, 'stages 3-4 + ASPP head',
                    lambda: dense_head(dh[False], dense_forward(ds[False],
                                                                x3)),
                    lambda: dense_head(dh[True], dense_forward(ds[True], x3)),
                    lambda mask: lambda: sel_head.selective(selective_stages(
                        mods, x3, mask, 'sparse')), rows)
            kernels.release_workspace()
            if bench.device.type == 'cuda':
                torch.cuda.empty_cache()
    head.float()
    for s in stages:
        s.float()


def time_ops(bench, args, gen, rows):
    from mmselds.ops.kernels import triton_kernels as tk
    h, w = args.size
    for name, c, r in op_shapes(args):
        for n in args.batch_sizes:
            for dname in args.dtypes:
                dtype = DTYPES[dname]
                x, wt, b = conv_case(bench, n, c, (h, w), gen, dtype)
                dense = bench.time(lambda: F.conv2d(x, wt, b, padding=r,
                                                    dilation=r))
                for rho in args.densities:
                    mask = random_cell_mask(n, h // 2, w // 2, 1 - rho,
                                            gen).to(bench.device)

                    def build():
                        return CellMask(mask, 'sparse').conv_index(
                            r, pooled_rows=False)
                    index_ms = bench.time(build)
                    cells = CellMask(mask, 'sparse')
                    feat = MixedFeature.from_dense(x, cells)
                    src, index = conv_source(feat, r)

                    def op():
                        return selective_conv2d(feat, wt, b, r)
                    with bench.backend('triton'):
                        t_op = bench.time(op)
                    t_kernel = bench.time(lambda: tk.gather_linear(
                        src, index, wt, b, interpret=args.smoke))
                    t_ref = None
                    if not args.no_reference:
                        with bench.backend('ref'):
                            t_ref = bench.time(op)
                    flops = rho + (1 - rho) / 4
                    bench.results['op', name, n, dname, rho] = (dense, t_op)
                    path = 'uniform' if rho in (0, 1) else 'gather'
                    # achieved rates: 2 x multiply-adds / time
                    per_row = 2 * 9 * c * c / 1e9  # GFLOP a row (ms -> T)
                    rows.append((
                        f'{name} C={c} r={r}', n, dname, rho, path,
                        cells.num_rows, fmt(dense), fmt(t_op),
                        fmt(t_kernel), fmt(t_ref), fmt(index_ms),
                        f'{t_op / dense:.2f}', f'{flops:.3f}',
                        f'{per_row * n * h * w / dense:.3g}',
                        '-' if not index.numel() else
                        f'{per_row * index.numel() / 9 / t_kernel:.3g}'))
                kernels.release_workspace()  # the reference's im2col
                if bench.device.type == 'cuda':
                    torch.cuda.empty_cache()


# the columns of time_against_dense's rows
AGAINST_DENSE = ('what', 'batch', 'dtype', 's', 'OS8 ms', 'OS16 ms',
                 'triton ms', 'reference ms', 'triton / OS8', 'triton / OS16',
                 'FLOPs / OS8')


def time_against_dense(bench, args, gen, n, dname, what, os8, os16,
                       selective, rows, size=None):
    """Time the dense OS8 and OS16 baselines ``os8()`` and ``os16()`` and,
    at each ratio s, ``selective(mask)()`` (a random mask of ratio s for
    the OS8 map ``size``, default ``args.size``) with the Triton backend
    and with the reference; one table row per s.
    Returns {s: (OS8 ms, OS16 ms, Triton ms)}."""
    h, w = size or args.size
    t8, t16 = bench.time(os8), bench.time(os16)
    times = {}
    for s in args.ratios:
        mask = random_cell_mask(n, h // 2, w // 2, s, gen).to(bench.device)
        run = selective(mask)
        with bench.backend('triton'):
            t_tri = bench.time(run)
        t_ref = None
        if not args.no_reference:
            with bench.backend('ref'):
                t_ref = bench.time(run)
        times[s] = (t8, t16, t_tri)
        rows.append((what, n, dname, s, fmt(t8), fmt(t16), fmt(t_tri),
                     fmt(t_ref), f'{t_tri / t8:.2f}', f'{t_tri / t16:.2f}',
                     f'{(1 - s) + s / 4:.3f}'))
    return times


def time_stages(bench, args, stages, gen, rows):
    c_in = stage_configs(args)[0][0]
    folded = {os16: folded_blocks(stages, os16) for os16 in (False, True)}

    def time_in(dname, x, what, size=None):
        """The stages in ``dname`` on ``x`` (float32, cast), dense against
        selective (:func:`time_against_dense`)."""
        dtype = DTYPES[dname]
        mods = [s.to(dtype) for s in stages]
        dense = {k: to_dtype(v, dtype) for k, v in folded.items()}
        x = x.to(dtype)
        with torch.no_grad():
            return time_against_dense(
                bench, args, gen, x.shape[0], dname, what,
                lambda: dense_forward(dense[False], x),
                lambda: dense_forward(dense[True], x),
                lambda mask: lambda: selective_forward(mods, x, mask,
                                                       'sparse'),
                rows, size=size)

    for n in args.batch_sizes:
        x32 = feature_map(bench, args, n, c_in, gen)  # cast for each dtype
        for dname in args.dtypes:
            times = time_in(dname, x32, 'R101 stages 3-4')
            for s, t in times.items():
                bench.results['stages', n, dname, s] = t
            kernels.release_workspace()
            if bench.device.type == 'cuda':
                torch.cuda.empty_cache()
    # the same passes on a 16 x 32 map, batch 1: the device's work is
    # negligible there, so the time is the host's (Python, kernel launches,
    # host reads) per pass, which a small input on a fast GPU waits for
    tiny = (16, 32)
    time_in(args.dtypes[0], feature_map(bench, args, 1, c_in, gen, size=tiny),
            'R101 stages 3-4, 16x32 map (host)', tiny)
    for s in stages:
        s.float()


# ---------------------------------------------------------------- train
def grads_of(stages):
    return torch.cat([p.grad.flatten() for s in stages
                      for p in s.parameters()])


def train_step(bench, stages, x, mask, amp, scaler=None):
    """Forward and backward of stages 3-4 in train mode: dense (mask None)
    or the selective stages in dense emulation under ``mask``; with
    ``amp``, float16 autocast and ``scaler``'s loss scaling."""
    for s in stages:
        s.zero_grad(set_to_none=True)
    with torch.autocast(bench.device.type, dtype=bench.amp_dtype,
                        enabled=amp):
        if mask is None:
            out = x
            for s in stages:
                out = s(out)
        else:
            out = selective_forward(stages, x, mask, 'dense')
        loss = out.float().square().mean()
    (scaler.scale(loss) if scaler is not None else loss).backward()
    if scaler is not None:
        inv = 1 / scaler.get_scale()
        for s in stages:
            for p in s.parameters():
                p.grad.mul_(inv)
    return loss


def train_part(bench, args, gen, checks, rows):
    """AMP training of stages 3-4 (dense emulation): checked against the
    float32 step, then timed with the peak memory."""
    h, w = (8, 16) if args.smoke else args.train_size
    n = args.train_batch
    stages = [s.train() for s in build_stages(bench, args, gen)]
    c_in = stage_configs(args)[0][0]
    x = torch.randn(n, c_in, h, w, generator=gen).to(bench.device)
    x = x.contiguous(memory_format=torch.channels_last)
    mask = random_cell_mask(n, h // 2, w // 2, 0.5, gen).to(bench.device)
    scaler = torch.amp.GradScaler(bench.device.type, init_scale=2.0**10,
                                  enabled=not args.smoke)
    state = [{k: v.clone() for k, v in s.state_dict().items()}
             for s in stages]

    def reset():  # the same BatchNorm statistics for each step
        for s, st in zip(stages, state):
            s.load_state_dict(st)
    # AMP moves the gradients of a deep stack by itself (low-precision
    # BatchNorm statistics, rounding through 26 blocks: 1 - cosine = 6e-3
    # for the dense stages in float16 on a CPU at 64 x 128 input, batch 2):
    # the dense network's own deviation is the yardstick of the selective
    # one's (a cast or gradient bug moves it by far more)
    amp_name = f'{bench.amp_name} AMP'
    dense_dev = None
    for what, m in (('dense OS8', None), ('selective s=0.5', mask)):
        with tf32(False):
            reset()
            train_step(bench, stages, x, m, False)
            want = grads_of(stages).double()
            reset()
            train_step(bench, stages, x, m, True, scaler)
            got = grads_of(stages).double()
        dev = 1 - float(got @ want / (got.norm() * want.norm()))
        if not torch.isfinite(got).all():
            dev = float('inf')
        if dense_dev is None:
            dense_dev, tol, verdict = dev, '-', bench.verdict(dev, 1.0)
        else:
            tol = 3 * dense_dev + 1e-3
            verdict = bench.verdict(dev, tol)
            tol = f'{tol:.1e} (3 x dense + 1e-3)'
        checks.append((f'train step {what}: AMP vs float32 gradients '
                       '(1 - cosine)', amp_name, f'{dev:.2e}', tol, verdict))
    for what, m in (('dense OS8', None), ('selective s=0.5 (emulation)',
                                          mask)):
        for amp in (False, True):
            if bench.device.type == 'cuda':
                torch.cuda.reset_peak_memory_stats()
            ms = bench.time(lambda: train_step(
                bench, stages, x, m, amp, scaler if amp else None))
            peak = torch.cuda.max_memory_allocated() / 2**20 \
                if bench.device.type == 'cuda' else None
            rows.append((what, n, amp_name if amp else 'fp32', fmt(ms),
                         '-' if peak is None else f'{peak:.0f}'))
    reset()


# ----------------------------------------------------------------- tune
def tune_configs(args):
    from mmselds.ops.kernels.triton_kernels import Config
    if args.smoke:
        return [Config(16, 16, 16, num_stages=1), Config(32, 16, 16,
                                                         num_stages=1)]
    # the gather kernel's tiles get 1 buffer on sm_8x and 2 on sm_90 with 3
    # stages, 2 and 3 with 5, 3 and 4 with 7 (see default_config)
    return [Config(m, n, k, 8, warps, st) for m, n, k, warps, st in (
        (128, 128, 64, 8, 3), (128, 128, 64, 8, 7), (128, 128, 64, 4, 5),
        (64, 128, 64, 4, 5), (128, 64, 64, 4, 5), (128, 128, 32, 8, 7),
        (128, 256, 64, 8, 5), (256, 128, 64, 8, 5))]


def tune_part(bench, args, gen, rows):
    from mmselds.ops.kernels import triton_kernels as tk
    h, w = args.size
    n = max(args.batch_sizes)
    dtype = torch.float32 if args.smoke else torch.float16
    for name, c, r in op_shapes(args):
        x, wt, b = conv_case(bench, n, c, (h, w), gen, dtype)
        mask = random_cell_mask(n, h // 2, w // 2, 0.5, gen).to(bench.device)
        feat = MixedFeature.from_dense(x, CellMask(mask, 'sparse'))
        src, index = conv_source(feat, r)
        R = index.numel() // 9
        default = tk.default_config(R, c, c, dtype, args.smoke,
                                    gather=True)
        ref = tk.gather_linear(src, index, wt, b, interpret=args.smoke)
        results = []
        for cfg in [default] + [c_ for c_ in tune_configs(args)
                                if c_ != default]:
            try:
                got = tk.gather_linear(src, index, wt, b, config=cfg,
                                       interpret=args.smoke)
                ok = rel_err(got, ref) <= 2 * TOL[dtype]
                ms = bench.time(lambda: tk.gather_linear(
                    src, index, wt, b, config=cfg, interpret=args.smoke))
                info = tk.kernel_info(src, index, wt, b, config=cfg,
                                      interpret=args.smoke)
            except Exception as err:  # e.g. out of shared memory
                results.append((cfg, None, type(err).__name__,
                                tk.KernelInfo(cfg)))
                continue
            results.append((cfg, ms, 'ok' if ok else 'WRONG', info))
            bench.failed |= not ok
        best = min((ms for _, ms, v, _ in results if v == 'ok'),
                   default=None)
        for cfg, ms, verdict, (_, regs, spills, shared) in results:
            rows.append((f'{name} C={c} r={r}', n, R,
                         '{}x{}x{} g{} w{} s{}'.format(*cfg) +
                         (' (default)' if cfg == default else ''),
                         fmt(ms), verdict,
                         '-' if ms is None or best is None
                         else f'{ms / best:.2f}',
                         '-' if regs is None else regs,
                         '-' if spills is None else 4 * spills,
                         '-' if shared is None else f'{shared / 1024:.1f}'))
        if bench.device.type == 'cuda':
            torch.cuda.empty_cache()


# --------------------------------------------------------------- targets
def target_rows(results, batch=8, dtype='fp16'):
    """The GPU targets (docs/gpu.md) against the timings of one run: stages
    3-4 at ``batch`` and ``dtype`` at least 1.4x faster than dense OS8 at
    s = 0.5, within 1.05x of it at s = 0 and within 1.2x of dense OS16 at
    s = 1; the op at the stage-3 shape (C = 256) in ``dtype``, every batch,
    density >= 0.25: op / dense <= FLOPs / dense + 0.10. Rows (target,
    measured, bound, verdict); a target without its timing is 'not
    measured'."""
    rows = []

    def add(what, value, bound, ok):
        rows.append((what, '-' if value is None else f'{value:.3f}', bound,
                     'not measured' if value is None else
                     'met' if ok(value) else 'MISSED'))
    where = f'stages 3-4, batch {batch}, {dtype}'
    for s, what, bound, value, ok in (
            (0.5, 'OS8 / selective', '>= 1.400',
             lambda t8, t16, t: t8 / t, lambda v: v >= 1.4),
            (0.0, 'selective / OS8', '<= 1.050',
             lambda t8, t16, t: t / t8, lambda v: v <= 1.05),
            (1.0, 'selective / OS16', '<= 1.200',
             lambda t8, t16, t: t / t16, lambda v: v <= 1.2)):
        times = results.get(('stages', batch, dtype, s))
        add(f'{where}, s = {s}: {what}',
            None if times is None else value(*times), bound, ok)
    ops = sorted((k[2], k[4]) for k in results
                 if k[0] == 'op' and k[1] == 'stage 3' and k[3] == dtype
                 and k[4] >= 0.25)
    for n, rho in ops or [(None, None)]:
        flops = None if rho is None else rho + (1 - rho) / 4
        times = results.get(('op', 'stage 3', n, dtype, rho))
        add(f'op stage 3, batch {n or "any"}, {dtype}, density '
            f'{rho if rho is not None else ">= 0.25"}: op / dense - FLOPs / '
            'dense', None if times is None else
            times[1] / times[0] - flops, '<= 0.100', lambda v: v <= 0.10)
    return rows


def header(bench, args):
    import triton
    if bench.device.type == 'cuda':
        dev = '{} (compute capability {}.{})'.format(
            torch.cuda.get_device_name(), *torch.cuda.get_device_capability())
    else:
        dev = 'CPU, Triton interpreter (smoke: times mean nothing)'
    return '\n'.join([
        '# GPU benchmark: selective execution with the Triton kernels', '',
        f'- date: {datetime.datetime.now():%Y-%m-%d %H:%M}',
        f'- device: {dev}',
        f'- torch {torch.__version__}, triton {triton.__version__}',
        f'- TF32: cuDNN convs and Triton kernels '
        f'{torch.backends.cudnn.allow_tf32}, reference matmuls '
        f'{torch.backends.cuda.matmul.allow_tf32}',
        '- cuDNN autotuner (cudnn.benchmark, as mmseg configs set it): '
        f'{torch.backends.cudnn.benchmark}',
        f'- OS8 map {args.size[0]}x{args.size[1]}; median of {bench.repeat} '
        f'runs after {bench.warmup} warm-up runs; times in ms',
        f'- command: {" ".join(sys.argv)}'])


def main(argv=None):
    args = parse_args(argv)
    if args.smoke:
        args.size = (8, 16)
        args.batch_sizes = args.batch_sizes[:1]
        args.dtypes = ('fp32', )
    elif not torch.cuda.is_available():
        sys.exit('benchmark_gpu needs a CUDA device (or --smoke)')
    if not triton_backend.triton_installed():
        sys.exit('benchmark_gpu needs triton')
    with torch_settings(args):
        run_parts(args)


@contextlib.contextmanager
def torch_settings(args):
    """TF32 and cuDNN's autotuner as the arguments say, put back after."""
    cudnn, matmul = torch.backends.cudnn, torch.backends.cuda.matmul
    old = (cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark)
    if args.no_tf32:
        cudnn.allow_tf32 = matmul.allow_tf32 = False
    cudnn.benchmark = not args.no_cudnn_benchmark
    try:
        yield
    finally:
        cudnn.allow_tf32, matmul.allow_tf32, cudnn.benchmark = old


def run_parts(args):
    """Every part the arguments ask for; the tables to ``args.out``."""
    bench = Bench(args)
    gen = torch.Generator().manual_seed(args.seed)
    parts = [header(bench, args)]

    def emit(text):
        """Print a part and rewrite --out with every part so far."""
        print(text, flush=True)
        parts.append(text)
        with open(args.out, 'w') as f:
            f.write('\n'.join(parts) + '\n')

    def took(start):
        return f'\n\n({time.perf_counter() - start:.0f} s)'

    emit(parts.pop())
    start = time.perf_counter()
    checks = []
    stages = build_stages(bench, args, gen)
    head = build_head(bench, args, gen)
    with torch.no_grad():
        check_ops(bench, args, gen, checks)
        check_stages(bench, args, stages, gen, checks)
        if 'head' in args.parts:
            check_head(bench, args, head, stages, gen, checks)
    train_rows = []
    if 'train' in args.parts:  # its checks join the table before timing
        train_start = time.perf_counter()
        train_part(bench, args, gen, checks, train_rows)
        train_took = took(train_start)
    emit('\n## correctness (on the device, before timing)\n\n'
         'error = max(abs(got - ref) / (1 + abs(ref))) unless said; float32 '
         'with TF32 off.\n\n'
         + md_table(('check', 'dtype', 'error', 'tolerance', 'result'),
                    checks) + took(start))

    def part(title, note, header, rows, seconds):
        emit(f'\n## {title}\n\n{note}\n\n' + md_table(header, rows)
             + seconds)

    def timed(fn, *extra):
        """(rows, seconds) of a timing part."""
        rows, start = [], time.perf_counter()
        with torch.no_grad():
            fn(bench, args, *extra, rows)
        return rows, took(start)

    if 'op' in args.parts:
        part('op: selective 3x3 conv vs dense cuDNN conv',
             'density = fraction of full-resolution cells; op = '
             '`selective_conv2d` (Triton backend), kernel = the Triton '
             'gather kernel alone, reference = the op on the PyTorch '
             'backend, index = building the mask layout and index table; '
             'FLOPs = rho + (1 - rho) / 4 of dense; TFLOP/s = 2 x '
             'multiply-adds / time of the dense conv and of the kernel.',
             ('shape', 'batch', 'dtype', 'density', 'path', 'rows',
              'dense ms', 'op ms', 'kernel ms', 'reference ms', 'index ms',
              'op / dense', 'FLOPs / dense', 'dense TFLOP/s',
              'kernel TFLOP/s'), *timed(time_ops, gen))
    if 'stages' in args.parts:
        part('stages 3-4: dense OS8 and OS16 vs selective',
             'dense = cuDNN, channels-last, BatchNorm folded (OS16: the '
             'OS16 network, stride-2 stage-3 entrance); selective = '
             '`run_residual_block` sparse (mask layout, index tables and '
             'the stage-4 densify included) with the Triton backend and with '
             'the PyTorch reference; FLOPs = (1 - s) + s / 4 of OS8. The '
             '16x32 rows: the same passes on a tiny map, whose time is the '
             "host's cost of issuing them (Python, launches, host reads).",
             AGAINST_DENSE, *timed(time_stages, stages, gen))
    if {'op', 'stages'} & set(args.parts):
        batch, dtype = (args.batch_sizes[0], 'fp32') if args.smoke \
            else (8, 'fp16')
        note = '; smoke: times mean nothing' if args.smoke else ''
        table = md_table(('target', 'measured', 'bound', 'verdict'),
                         target_rows(bench.results, batch, dtype))
        emit('\n## targets (docs/gpu.md)\n\nFrom the op and stages tables '
             f'above ({dtype}; stages at batch {batch}, the op at every '
             f'batch{note}).\n\n{table}')
    if 'head' in args.parts:
        c_in, c, rates, classes = head_config(args)
        part('ASPP head: dense OS8 and OS16 vs selective',
             f"DeepLabV3's ASPP head ({c_in} in, {c} channels, rates "
             f'{", ".join(map(str, rates))}, image pool, 3x3 bottleneck, '
             f'{classes} classes) on a stage-4 '
             'output, and stages 3-4 with the head (the selective stages '
             'pass their mixed feature on, as `SelDSASPPHead` reads it); '
             'dense = cuDNN, channels-last, BatchNorm folded (OS16: rates '
             'halved on the OS16 map); selective = `mmselds.ops.run_aspp` '
             'sparse (mask layout, index tables and the logits densified '
             'included; the head alone starts from the stage-4 rows and '
             'builds the mask layout, which the model builds once for '
             'backbone and head); '
             'FLOPs = (1 - s) + s / 4 of OS8 (the image pool left out).',
             AGAINST_DENSE, *timed(time_head, head, stages, gen))
    if 'train' in args.parts:
        h, w = (8, 16) if args.smoke else args.train_size
        part(f'train step: stages 3-4, {8 * h}x{8 * w} crops',
             'forward + backward, train-mode BatchNorm, batch '
             f'{args.train_batch}; selective = dense emulation (how the '
             'models train: both resolutions computed, then blended); AMP = '
             f'{bench.amp_name} autocast with loss scaling; peak = '
             'max memory allocated during the timed steps.',
             ('stages', 'batch', 'precision', 'ms', 'peak MiB'), train_rows,
             train_took)
    if 'tune' in args.parts:
        part('tune: Triton gather kernel tile configurations',
             'density 0.5; tiles BLOCK_M x BLOCK_N x BLOCK_K, group, warps, '
             'pipeline stages; / best = time over the fastest correct '
             'configuration; regs = registers a thread, spill = bytes of '
             'local memory a thread (register spills), smem = shared '
             'memory a program (compiled kernels only).',
             ('shape', 'batch', 'rows', 'config', 'kernel ms', 'result',
              '/ best', 'regs', 'spill B', 'smem KiB'),
             *timed(tune_part, gen))
    print(f'\nwritten to {args.out}')
    if bench.failed:
        sys.exit('correctness check FAILED (see the table)')


if __name__ == '__main__':
    main()
