"""Timing and peak memory of segmentor inference under forced masks.

Torch only at import time: the helpers that need mmseg or mmcv
(:func:`dense_twin`, :func:`optimise_dense`) import them when called.
"""
import contextlib
import copy
import os
import statistics
import sys
import tempfile
import time
from typing import Callable, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import nn

from mmselds.ops.functional import release_workspace


def inference_fn(model: nn.Module, x: torch.Tensor, part: str,
                 mask: Optional[torch.Tensor] = None) -> Callable[[], None]:
    """A closure running the backbone (``part='backbone'``) or the whole
    segmentor (backbone, neck, decode head, resize to the input, as mmseg's
    ``encode_decode``) on ``x``; ``mask`` forces a selective backbone's
    down-sampling mask."""
    kwargs = {} if mask is None else dict(ds_mask=mask)

    def run():
        with torch.no_grad():
            feats = model.backbone(x, **kwargs)
            if part == 'backbone':
                # every output as a dense map, as a dense backbone gives
                # them (a selective one densifies them when they are read)
                return tuple(feats)
            if getattr(model, 'with_neck', False):
                feats = model.neck(feats)
            logits = model.decode_head.forward(feats)
            return F.interpolate(logits, x.shape[2:], mode='bilinear',
                                 align_corners=model.align_corners)
    return run


def _synchronizer(device: Union[str, torch.device]) -> Callable[[], None]:
    """Waits for the device's queued work (CUDA), or does nothing (CPU)."""
    device = torch.device(device)
    if device.type == 'cuda':
        return lambda: torch.cuda.synchronize(device)
    return lambda: None


def time_call(fn: Callable[..., object], *args,
              device: Union[str, torch.device] = 'cpu') -> float:
    """Seconds of one call ``fn(*args)`` on ``device``, the device's queued
    work waited for before and after (``torch.cuda.synchronize`` on CUDA),
    so that the time is the call's, not the time to queue it."""
    sync = _synchronizer(device)
    sync()
    start = time.perf_counter()
    fn(*args)
    sync()
    return time.perf_counter() - start


def time_interleaved(cases: Dict[str, Callable[..., None]],
                     repeat: Optional[int] = None, warmup: int = 1,
                     device: Union[str, torch.device] = 'cpu',
                     progress: Optional[Callable[[str], None]] = None,
                     inputs: Optional[Sequence] = None) -> Dict[str, list]:
    """Seconds of every case over the rounds, each round running all cases
    once (noise of a shared machine hits all cases alike).

    Args:
        cases (dict): name -> function to time.
        repeat (int, optional): timed rounds of ``fn()``.
        warmup (int): untimed rounds first (they take the first inputs).
            Default: 1.
        device (str | torch.device): where the cases run; each call is
            timed with :func:`time_call` (CUDA: synchronised). Default:
            'cpu'.
        progress (callable, optional): gets a line after each round (e.g.
            a logger's ``info``).
        inputs (sequence, optional): instead of ``repeat``, one round per
            element ``x``, running ``fn(x)``.

    Returns:
        dict: name -> list of seconds, one per timed round (take the
        :func:`median`).
    """
    if inputs is None:
        if repeat is None:
            raise ValueError('time_interleaved needs repeat or inputs')
        rounds = [()] * repeat
    else:
        rounds = [(x, ) for x in inputs]
    begin = time.perf_counter()

    def report(done: str):
        if progress is not None:
            progress(f'{done} ({time.perf_counter() - begin:.0f} s)')

    for i in range(warmup):
        for fn in cases.values():
            fn(*rounds[i % len(rounds)])
        report(f'warm-up round {i + 1}/{warmup} done')
    times = {name: [] for name in cases}
    for i, args in enumerate(rounds):
        for name, fn in cases.items():
            times[name].append(time_call(fn, *args, device=device))
        report(f'timed round {i + 1}/{len(rounds)} done')
    return times


def median(values) -> float:
    """The median of ``values`` (e.g. one case of :func:`time_interleaved`),
    robust to the rounds a shared machine slows down."""
    return statistics.median(values)


@contextlib.contextmanager
def drop_native_stderr_lines(*patterns: str):
    """Drop the lines containing any of ``patterns`` that native code (C++)
    writes to the process's stderr (file descriptor 2) inside the block;
    every other line is written back to stderr when the block ends."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):  # no real stderr: pass
        yield
        return
    encoded = [p.encode() for p in patterns]
    sys.stderr.flush()
    saved = os.dup(fd)
    with tempfile.TemporaryFile(mode='w+b') as capture:
        os.dup2(capture.fileno(), fd)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, fd)
            os.close(saved)
            capture.seek(0)
            keep = [line for line in capture.read().splitlines(True)
                    if not any(p in line for p in encoded)]
            if keep:
                os.write(fd, b''.join(keep))


# what torch's profiler writes to stderr on every CPU memory profile, and
# is no problem for :func:`peak_memory`: kineto's trace points, and the
# notice that blocks allocated before profiling and freed during it are not
# in the timeline (right for a peak on top of what existed before)
PROFILER_NOISE = ('USDT:', 'Memory block of unknown size was allocated '
                  'before the profiling started')


def peak_memory(fn: Callable[[], None], device: str = 'cpu') -> int:
    """Peak bytes of tensor memory one call of ``fn`` allocates on top of
    what existed before it (activations, index tables, the sparse im2col
    workspace, which is released first so that it counts).

    CUDA: the caching allocator's peak. CPU: the allocation and free events
    of torch's memory profiler, replayed (the resident set size is no
    measure here: the C allocator keeps freed memory).
    """
    release_workspace()
    if device.startswith('cuda'):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        fn()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    from torch.profiler import ProfilerActivity, profile
    from torch.profiler._memory_profiler import Action
    with drop_native_stderr_lines(*PROFILER_NOISE), profile(
            activities=[ProfilerActivity.CPU], profile_memory=True,
            record_shapes=True, with_stack=True) as prof:
        fn()
    current = peak = 0
    for _, action, _, size in sorted(prof._memory_profile().timeline,
                                     key=lambda event: event[0]):
        if action == Action.CREATE:
            current += size
        elif action == Action.DESTROY:
            current -= size
        peak = max(peak, current)
    return peak


def dense_twin(model_cfg, model: nn.Module, os: int) -> nn.Module:
    """mmseg's dense ``EncoderDecoder`` + ``ResNetV1c`` built from a
    selective model's config at OS8 or OS16 (strides (1, 2, 2, 1),
    dilations (1, 1, 1, 2) and halved ASPP rates, as mmseg's D16 configs),
    holding the selective model's weights."""
    from mmseg.registry import MODELS
    cfg = copy.deepcopy(model_cfg)
    cfg.type = 'EncoderDecoder'
    for key in ('sparsity_loss', 'train_only'):
        cfg.pop(key, None)
    cfg.pretrained = None
    backbone = cfg.backbone
    backbone.type = 'ResNetV1c'
    for key in ('mask_head', 'pooling', 'execution', 'init_cfg'):
        backbone.pop(key, None)
    if os == 16:
        backbone.update(strides=(1, 2, 2, 1), dilations=(1, 1, 1, 2))
        if 'dilations' in cfg.decode_head:
            cfg.decode_head.dilations = tuple(
                d // 2 if d > 1 else d for d in cfg.decode_head.dilations)
    twin = MODELS.build(cfg)
    missing, _ = twin.load_state_dict(model.state_dict(), strict=False)
    if missing:
        raise RuntimeError(f'dense twin misses weights: {missing[:5]}')
    twin.eval()
    return twin


def fold_conv_norm(conv: nn.Conv2d, norm: nn.Module) -> nn.Conv2d:
    """A conv computing ``norm(conv(x))`` for an eval-mode BatchNorm."""
    from mmselds.ops import fold_batch_norm
    weight, bias = fold_batch_norm(conv.weight, conv.bias, norm)
    fused = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size,
                      conv.stride, conv.padding, conv.dilation, conv.groups,
                      bias=True).to(weight.device, weight.dtype)
    with torch.no_grad():
        fused.weight.copy_(weight)
        fused.bias.copy_(bias)
    return fused


def _conv_norm_pairs(module: nn.Module):
    """(conv attribute, norm attribute) pairs of mmseg/mmcv modules whose
    norm directly follows the conv: ``ConvModule`` (conv, norm), ResNet
    blocks (convN, normN), ``Sequential`` stems and shortcuts."""
    from mmcv.cnn import ConvModule
    from mmseg.models.backbones.resnet import BasicBlock, Bottleneck
    if isinstance(module, ConvModule):
        if module.with_norm and module.order.index('norm') == \
                module.order.index('conv') + 1:
            yield 'conv', module.norm_name
    elif isinstance(module, (BasicBlock, Bottleneck)):
        for i in (1, 2, 3):
            if hasattr(module, f'conv{i}'):
                yield f'conv{i}', getattr(module, f'norm{i}_name')
    elif isinstance(module, nn.Sequential):
        names = [n for n, _ in module.named_children()]
        for a, b in zip(names, names[1:]):
            yield a, b


def optimise_dense(model: nn.Module) -> nn.Module:
    """The two optimisations a performance-minded user applies to a dense
    mmseg model for CPU inference, in place: every BatchNorm that directly
    follows a conv is folded into it (the norm becomes ``Identity``), and
    the weights go to channels-last memory (feed channels-last inputs).
    Same outputs up to float round-off."""
    from torch.nn.modules.batchnorm import _BatchNorm
    model.eval()
    for module in list(model.modules()):
        for conv_name, norm_name in list(_conv_norm_pairs(module)):
            conv = getattr(module, conv_name)
            norm = getattr(module, norm_name)
            if type(conv) is nn.Conv2d and isinstance(norm, _BatchNorm):
                setattr(module, conv_name, fold_conv_norm(conv, norm))
                setattr(module, norm_name, nn.Identity())
    return model.to(memory_format=torch.channels_last)
