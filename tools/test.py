"""Test (and evaluate) a segmentor (mmseg's ``tools/test.py`` interface)."""
import argparse
import os
import sys

from mmengine.config import DictAction
from mmengine.runner import Runner

import mmselds  # noqa: F401  (registers modules; resolves mmseg:: bases)
from mmselds.engine.hooks import add_check_load_hook
from mmselds.utils.launch import load_config, prepare_launch, run_cli


def parse_args():
    parser = argparse.ArgumentParser(
        description='MMSeg test (and eval) a model')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file')
    parser.add_argument(
        '--work-dir', help='the directory to save the metric results (json)')
    parser.add_argument(
        '--out', type=str,
        help='the directory to save output predictions for offline '
        'evaluation')
    parser.add_argument(
        '--show', action='store_true', help='show prediction results')
    parser.add_argument(
        '--show-dir',
        help='directory where painted images will be saved, in its '
        'vis_data/vis_image/ (a relative path is relative to the current '
        'folder, not to the work dir)')
    parser.add_argument(
        '--wait-time', type=float, default=2, help='the interval of show (s)')
    parser.add_argument(
        '--cfg-options', nargs='+', action=DictAction,
        help='override settings of the config, key=value pairs, e.g. '
        'model.backbone.mask_head.threshold=0.7')
    parser.add_argument(
        '--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
        default='none', help='job launcher')
    parser.add_argument(
        '--tta', action='store_true',
        help='test time augmentation: the tta_pipeline (flips and scales) '
        'and tta_model of the config')
    parser.add_argument(
        '--no-strict-load', action='store_true',
        help='load a checkpoint that does not fit the model (missing, '
        'unexpected or differently shaped tensors) with a warning instead '
        'of an error; what does not fit keeps its initialisation')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def trigger_visualization_hook(cfg, args):
    hooks = cfg.default_hooks
    if 'visualization' not in hooks:
        raise RuntimeError('--show/--show-dir need a visualization hook in '
                           'default_hooks, e.g. visualization=dict('
                           'type="SegVisualizationHook")')
    hooks['visualization']['draw'] = True
    if args.show:
        hooks['visualization']['show'] = True
        hooks['visualization']['wait_time'] = args.wait_time
    if args.show_dir:
        cfg.visualizer['save_dir'] = args.show_dir
    return cfg


def main():
    args = parse_args()
    cfg = load_config(args, mode='test')
    cfg.load_from = args.checkpoint
    if args.show or args.show_dir:
        cfg = trigger_visualization_hook(cfg, args)
    add_check_load_hook(cfg, strict=not args.no_strict_load, inference=True)
    if args.tta:
        absent = [k for k in ('tta_pipeline', 'tta_model')
                  if cfg.get(k, None) is None]
        if absent:
            sys.exit(f'error: --tta needs {" and ".join(absent)} in '
                     f'{args.config} (e.g. inherit '
                     'configs/_base_/datasets/synthetic_cityscapes.py or '
                     "mmseg's _base_/datasets/cityscapes.py, and "
                     "mmseg's _base_/default_runtime.py)")
        if cfg.tta_model.get('type') == 'SegTTAModel' and \
                cfg.model.get('type') == 'SelDSEncoderDecoder':
            # the same merge, keeping the passes' mean down-sampling ratio
            cfg.tta_model.type = 'SelDSTTAModel'
        cfg.test_dataloader.dataset.pipeline = cfg.tta_pipeline
        cfg.tta_model.module = cfg.model
        cfg.model = cfg.tta_model
    if args.out is not None:
        evaluators = cfg.test_evaluator if isinstance(
            cfg.test_evaluator, (list, tuple)) else [cfg.test_evaluator]
        for evaluator in evaluators:
            if evaluator.get('type') == 'IoUMetric':
                evaluator['output_dir'] = args.out
                evaluator['keep_results'] = True
    cfg = prepare_launch(cfg, args.launcher)
    Runner.from_cfg(cfg).test()


if __name__ == '__main__':
    run_cli(main)
