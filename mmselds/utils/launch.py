"""Config preparation shared by ``tools/train.py`` and ``tools/test.py``,
the error handling of every tool's command line, and the training runs
the demo and the ablation start."""
import atexit
import copy
import hashlib
import json
import os
import os.path as osp
import re
import subprocess
import sys
from typing import Callable, Optional

import torch
import torch.distributed as dist
from mmengine.config import Config
from mmengine.logging import print_log

from mmselds.datasets.checks import (InvalidLabelError, NoImagesError,
                                     check_dataloader_images)
from mmselds.datasets.synthetic_cityscapes import (GeneratedDataError,
                                                   read_record)
from mmselds.ops import SparseTrainingError
from mmselds.utils.config import (InvalidConfigError, argument_error,
                                  merge_options, option_error, read_config,
                                  registry_error)


def load_config(args, mode: Optional[str] = None) -> Config:
    """The config of ``args.config`` with ``--cfg-options``, ``--launcher``
    and ``--work-dir`` applied (default: ./work_dirs/<config name>).

    The image folders of the dataloaders the run will build are checked
    (:func:`check_run_data`): ``mode='train'``: the training and, with a
    validation loop, validation data; ``mode='test'``: the test data.
    Default: ``'test'`` for ``tools/test.py``'s arguments (they have
    ``checkpoint``), else ``'train'``. A missing folder or one without
    images stops here with a message naming it (``SystemExit``).
    """
    cfg = read_config(args.config)
    cfg.launcher = args.launcher
    merge_options(cfg, args.cfg_options)
    if args.work_dir is not None:
        cfg.work_dir = args.work_dir
    elif cfg.get('work_dir', None) is None:
        cfg.work_dir = osp.join('./work_dirs',
                                osp.splitext(osp.basename(args.config))[0])
    if mode is None:
        mode = 'test' if getattr(args, 'checkpoint', None) else 'train'
    try:
        check_run_data(cfg, mode)
    except (NoImagesError, InvalidLabelError) as error:
        raise SystemExit(f'error: {error}') from None
    return cfg


def check_run_data(cfg: Config, mode: str) -> None:
    """Raise :class:`~mmselds.datasets.NoImagesError` if a dataloader that
    a ``mode`` run (``'train'``: training + validation if the config has a
    validation loop; ``'test'``; ``'val'``) builds would find no images,
    or :class:`~mmselds.datasets.InvalidLabelError` if their label files
    do not fit the images."""
    if mode == 'train':
        loaders = ['train_dataloader']
        if cfg.get('val_cfg') and cfg.get('val_evaluator'):
            loaders.append('val_dataloader')
    elif mode in ('test', 'val'):
        loaders = [f'{mode}_dataloader']
    else:
        raise ValueError(f"mode must be 'train', 'val' or 'test', got "
                         f'{mode!r}')
    check_dataloader_images(cfg, loaders)


def sync_bn_to_bn(cfg):
    """Replace every ``SyncBN`` norm config in a config tree by ``BN``."""
    if isinstance(cfg, dict):
        if cfg.get('type') == 'SyncBN':
            cfg['type'] = 'BN'
        for value in cfg.values():
            sync_bn_to_bn(value)
    elif isinstance(cfg, (list, tuple)):
        for value in cfg:
            sync_bn_to_bn(value)
    return cfg


def prepare_launch(cfg: Config, launcher: str) -> Config:
    """Adapt a config to the machine.

    Without CUDA: ``SyncBN`` becomes ``BN`` (SyncBatchNorm needs a GPU);
    with the ``pytorch`` launcher the gloo process group is started here
    (mmengine's ``init_dist`` selects a CUDA device) and DDP wraps the CPU
    model without ``device_ids``.
    """
    if torch.cuda.is_available():
        return cfg
    cfg = copy.deepcopy(cfg)
    cfg.model = sync_bn_to_bn(cfg.model)
    cfg.env_cfg.setdefault('dist_cfg', {})['backend'] = 'gloo'
    if launcher == 'pytorch':
        if not dist.is_initialized():
            dist.init_process_group('gloo')
        wrapper = dict(type='MMDistributedDataParallel', device_ids=None,
                       broadcast_buffers=False,
                       find_unused_parameters=cfg.get(
                           'find_unused_parameters', False))
        wrapper.update(cfg.get('model_wrapper_cfg') or {})
        cfg.model_wrapper_cfg = wrapper
        print_log(f'CPU data-parallel run: gloo backend, rank '
                  f'{os.environ.get("RANK")} of {os.environ.get("WORLD_SIZE")}'
                  ', SyncBN replaced by BN', logger='current')
    return cfg


def run_cli(main: Callable[[], object]):
    """Run a tool's ``main``: a config path that is not a config file, a
    checkpoint that cannot be read or does not fit the model, a data
    folder without images, or one the data generator will not write into,
    label maps that are not labels of the model's classes or not the size
    of their images, a ``--cfg-options`` key that adds an argument a class
    does not take (:func:`~mmselds.utils.config.option_error`), an
    argument value one of the project's classes refuses as the config is
    built (:func:`~mmselds.utils.config.argument_error`), a ``type`` no
    registry holds (:func:`~mmselds.utils.config.registry_error`), a
    checkpoint download that fails
    (:func:`~mmselds.utils.checkpoint.download_error`: no network), or
    training with sparse execution
    (:class:`~mmselds.ops.SparseTrainingError`) ends the tool with one
    ``error: ...`` line and exit status 1 instead of a traceback."""
    from mmselds.utils.checkpoint import (CheckpointMismatchError,
                                          InvalidCheckpointError,
                                          download_error)
    try:
        result = main()
    except (InvalidCheckpointError, CheckpointMismatchError,
            GeneratedDataError, InvalidConfigError, InvalidLabelError,
            NoImagesError, SparseTrainingError) as err:
        sys.exit(f'error: {err}')
    except (TypeError, ValueError, KeyError, OSError) as err:
        # each explainer answers None for errors it does not explain
        message = (option_error(err) or argument_error(err)
                   or registry_error(err) or download_error(err))
        if message is None:
            raise
        sys.exit(f'error: {message}')
    close_process_group()
    return result


def close_process_group() -> None:
    """End a distributed run that finished normally: destroy its default
    process group and, for the Gloo backend (CPU data parallel), end the
    process once the exit handlers have run.

    Measured with ``dist_train.sh`` on the demo config (2 CPU processes,
    torch 2.13): 1 run in 10 to 20 had a rank abort with ``terminate called
    without an active exception`` (SIGABRT, exit status -6) after the run
    had finished and its checkpoints were written - during interpreter
    teardown (no Python frame left), with the process group destroyed,
    because DistributedDataParallel leaves references to the process group
    that outlive the model, so Gloo's objects are destroyed with the
    interpreter. So a Gloo rank runs its ``atexit`` handlers (log files
    flushed, data-loader workers stopped) while Python is still whole and
    then leaves with ``os._exit(0)``, skipping that teardown. NCCL runs only
    destroy the group. Not called after an error: the other ranks may still
    be inside a collective."""
    if not (dist.is_available() and dist.is_initialized()):
        return
    gloo = dist.get_backend() == dist.Backend.GLOO
    dist.destroy_process_group()
    if gloo:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)


def stream_training(name: str, cmd: list) -> None:
    """Run a ``tools/train.py`` command line, printing one progress line per
    logged iteration (``eta``, ``loss``, ``ds_ratio``, ``mIoU``); exit with
    the last 40 lines of its output if it fails. Used by the demo and the
    ablation."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    tail = []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        step = re.search(r'Iter\((train|val)\) \[\s*(\d+/\d+)\]', line)
        if step:
            values = dict(re.findall(r'([\w.]+): (\S+)', line))
            keep = [f'{k} {values[k]}' for k in ('eta', 'loss', 'ds_ratio',
                                                 'mIoU') if k in values]
            print(f'    {name}: {step.group(1)} {step.group(2)}  '
                  f'{"  ".join(keep)}', flush=True)
    if proc.wait():
        sys.exit(f'error: training {name} failed:\n{"".join(tail)}')


RUN_RECORD = 'mmselds_run.json'


def train_or_reuse(name: str, config: str, work: str, options: list,
                   retrain: bool = False,
                   log: Callable[[str], None] = print) -> str:
    """Train ``config`` with ``tools/train.py`` in ``work`` (progress lines
    from :func:`stream_training`) and return the final checkpoint, or
    return the checkpoint of a finished earlier run of the same config
    (path and resolved content) with the same ``options`` on the same data
    (a generated data root's record, :func:`~mmselds.datasets.read_record`:
    regenerated data retrains) in ``work``, unless ``retrain``. The demo
    and the ablation train this way.

    Args:
        name (str): the run's name in the progress lines.
        config (str): the config file.
        work (str): the work dir (``--work-dir``).
        options (list[str]): ``--cfg-options`` entries (``key=value``).
        retrain (bool): train even if a matching run is there.
        log (callable): gets one line when a run starts or is reused.
    """
    root = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
    text = Config.fromfile(config).pretty_text
    roots = sorted({o.split('=', 1)[1] for o in options
                    if '.dataset.data_root=' in o})
    settings = dict(config=osp.abspath(config), options=list(options),
                    config_sha256=hashlib.sha256(text.encode()).hexdigest(),
                    data={root: read_record(root) for root in roots})
    record = osp.join(work, RUN_RECORD)
    last = osp.join(work, 'last_checkpoint')
    if not retrain and osp.exists(last) and osp.exists(record):
        path = open(last).read().strip()
        with open(record) as f:
            same = json.load(f) == settings
        if same and osp.exists(path):
            log(f'{name}: using {path} (--retrain to train again)')
            return path
    cmd = [sys.executable, osp.join(root, 'tools', 'train.py'), config,
           '--work-dir', work, '--cfg-options', *options]
    shown = [o for o in options
             if 'data_root' not in o and not o.startswith('load_from=')]
    loaded = [o.split('=', 1)[1] for o in options
              if o.startswith('load_from=')]
    log(f'{name}: training (tools/train.py {osp.relpath(config, root)}'
        + (f' --cfg-options {" ".join(shown)}' if shown else '')
        + (f', from {loaded[0]}' if loaded else '') + ') ...')
    stream_training(name, cmd)
    with open(record, 'w') as f:
        json.dump(settings, f, indent=2)
    return open(last).read().strip()
