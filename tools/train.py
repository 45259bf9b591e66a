"""Train a segmentor (mmseg's ``tools/train.py`` interface)."""
import argparse
import logging
import os

from mmengine.config import DictAction
from mmengine.logging import print_log
from mmengine.runner import Runner
from mmseg.registry import RUNNERS

import mmselds  # noqa: F401  (registers modules; resolves mmseg:: bases)
from mmselds.engine.hooks import add_check_load_hook, add_hook, resolve_resume
from mmselds.utils.launch import load_config, prepare_launch, run_cli


def parse_args():
    parser = argparse.ArgumentParser(description='Train a segmentor')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='the dir to save logs and models')
    parser.add_argument(
        '--resume', action='store_true', default=False,
        help='resume from the latest checkpoint in the work_dir '
        'automatically; with load_from set, from load_from if it is a '
        'training state of this run, else (a fine-tuning initialisation) '
        'from the latest checkpoint in the work_dir, or a new run from '
        'load_from')
    parser.add_argument(
        '--amp', action='store_true', default=False,
        help='enable automatic-mixed-precision training')
    parser.add_argument(
        '--no-strict-load', action='store_true',
        help='load a load_from or resume checkpoint that does not fit the '
        'model (missing, unexpected or differently shaped tensors) with a '
        'warning instead of an error; what does not fit keeps its '
        'initialisation')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, key=value pairs, e.g. '
        'train_cfg.max_iters=100 model.backbone.execution=dense')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def amp_device_available() -> bool:
    """Whether mmengine's ``AmpOptimWrapper`` can train here (its own
    check)."""
    from mmengine import device
    return any(getattr(device, f'is_{name}_available', lambda: False)()
               for name in ('cuda', 'npu', 'mlu', 'musa'))


def main():
    args = parse_args()
    if args.amp and not amp_device_available():
        raise SystemExit(
            'error: --amp needs a GPU (CUDA, NPU, MLU or MUSA): '
            "mmengine's AmpOptimWrapper does not train on the CPU, and "
            'this machine has no such device')
    cfg = load_config(args, mode='train')
    if args.amp:
        if cfg.optim_wrapper.type == 'AmpOptimWrapper':
            print_log('AMP training is already enabled in your config.',
                      logger='current', level=logging.WARNING)
        elif cfg.optim_wrapper.type != 'OptimWrapper':
            raise ValueError('--amp needs optim_wrapper.type="OptimWrapper", '
                             f'got {cfg.optim_wrapper.type}')
        else:
            cfg.optim_wrapper.type = 'AmpOptimWrapper'
            cfg.optim_wrapper.loss_scale = 'dynamic'
    cfg.resume = args.resume
    add_check_load_hook(cfg, strict=not args.no_strict_load)
    add_hook(cfg, 'ExactResumeHook')  # --resume continues the run exactly
    cfg = prepare_launch(cfg, args.launcher)
    runner = Runner.from_cfg(cfg) if 'runner_type' not in cfg \
        else RUNNERS.build(cfg)
    resolve_resume(runner)  # --resume with a fine-tuning load_from
    runner.train()


if __name__ == '__main__':
    run_cli(main)
