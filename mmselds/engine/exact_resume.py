"""Resuming that ends with the weights of the uninterrupted run (DESIGN I5).

mmengine restores the weights, the optimizer, the schedulers, the message
hub and the sampler's position when a run resumes, but not the random
streams that training consumes after the checkpoint: the global torch
generator (Gumbel noise of the mask, dropout, the data loader's base seed),
the CUDA generators, numpy's and Python's generators (the data pipeline's
augmentations when it runs in the main process). A resumed run then draws
other noise and ends with other weights. :class:`ExactResumeHook` saves
those states in every checkpoint and puts them back at the exact point of
the resumed run where the uninterrupted run continued.
"""
import random
from typing import Any, Dict, Optional

import numpy as np
import torch
from mmengine.dist import get_rank, get_world_size
from mmengine.hooks import Hook
from mmengine.logging import print_log
from mmseg.registry import HOOKS

RNG_KEY = 'rng_states'


def get_rng_states() -> Dict[str, Any]:
    """The states of every random generator that training draws from, as
    tensors and plain numbers (a checkpoint holding them still loads with
    ``torch.load(..., weights_only=True)``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    states = dict(
        torch=torch.get_rng_state(),
        numpy=dict(name=name, keys=torch.from_numpy(keys.astype(np.int64)),
                   pos=int(pos), has_gauss=int(has_gauss),
                   cached_gaussian=float(cached)),
        python=dict(version=version, state=list(internal),
                    gauss_next=gauss_next))
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states['cuda'] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: Dict[str, Any]) -> None:
    """Put back what :func:`get_rng_states` returned."""
    torch.set_rng_state(states['torch'].cpu())
    n = states['numpy']
    np.random.set_state((n['name'], n['keys'].numpy().astype(np.uint32),
                         n['pos'], n['has_gauss'], n['cached_gaussian']))
    p = states['python']
    random.setstate((p['version'], tuple(p['state']), p['gauss_next']))
    if 'cuda' in states and torch.cuda.is_available():
        cuda = states['cuda']
        if len(cuda) != torch.cuda.device_count():
            raise RuntimeError(
                f'the checkpoint holds the states of {len(cuda)} CUDA '
                f'generators, this machine has {torch.cuda.device_count()} '
                'devices: an exact resume needs the same ones')
        torch.cuda.set_rng_state_all([s.cpu() for s in cuda])


class _RestoreBeforeNext:
    """Wraps the train loop's data iterator: before the first batch of the
    resumed run is fetched, the data loader's iterator is created (it draws
    its base seed, as the uninterrupted run's had long done) and then the
    saved random states are put back."""

    def __init__(self, iterator, states: Dict[str, Any]):
        self._iterator = iterator
        self._states: Optional[Dict[str, Any]] = states

    def __getattr__(self, name):
        return getattr(self._iterator, name)

    def __iter__(self):
        return self

    def __next__(self):
        if self._states is not None:
            ensure = getattr(self._iterator, '_ensure_iterator', None)
            if ensure is not None:
                ensure()
            set_rng_states(self._states)
            self._states = None
        return next(self._iterator)


_SUBCLASSES: Dict[tuple, type] = {}


def _subclass(kind: str, base: type) -> type:
    """``base`` with the methods of ``_MIXINS[kind]``, created once per
    pair (a direct subclass, so instances can switch to it in place)."""
    key = (kind, base)
    if key not in _SUBCLASSES:
        _SUBCLASSES[key] = type(f'{kind}[{base.__name__}]', (base, ),
                                dict(_MIXINS[kind], _selds_kind=kind))
    return _SUBCLASSES[key]


def _rebuild(kind: str, base: type, state: dict):
    obj = object.__new__(_subclass(kind, base))
    obj.__dict__.update(state)
    return obj


def _extend(obj, kind: str, **attrs) -> None:
    """Give ``obj`` the behaviour of ``_MIXINS[kind]`` in place (the data
    loader holds it and may not be given another object)."""
    if getattr(obj, '_selds_kind', None) != kind:
        obj.__class__ = _subclass(kind, type(obj))
    obj.__dict__.update(attrs)


def _base(obj) -> type:
    return type(obj).__bases__[0]


def _reduce_ex(self, protocol):  # picklable for spawned workers
    return _rebuild, (self._selds_kind, _base(self), self.__dict__.copy())


def _sampler_skip(self, num_samples: int) -> None:
    # InfiniteSampler on resume: the stream goes on from ``num_samples``
    _base(self).skip(self, num_samples)
    self._selds_position = num_samples


def _sampler_iter(self):
    """Yields ``(position, index)``: each index with its position in the
    rank's stream of samples, counted from the start of training."""
    if not hasattr(_base(self), 'skip'):  # epoch-based: restarts per epoch
        self._selds_position = getattr(self, 'epoch', 0) * len(self)
    for index in _base(self).__iter__(self):
        position = self._selds_position
        self._selds_position += 1
        yield position, index


def _dataset_getitem(self, item):
    """Loads sample ``(position, index)`` with the numpy, Python and torch
    CPU generators seeded from (seed, rank, position), keeping the caller's
    states: the sample's augmentation is the same whichever process loads
    it, and loading draws nothing from the process's own streams. (Data
    pipelines run on the CPU: the CUDA generators are not touched.)"""
    getitem = _base(self).__getitem__
    if not (isinstance(item, tuple) and len(item) == 2):
        return getitem(self, item)
    position, index = item
    seeds = np.random.SeedSequence(
        [self._selds_seed, self._selds_rank, position]).generate_state(2)
    saved = (np.random.get_state(), random.getstate(), torch.get_rng_state())
    np.random.seed(int(seeds[0]))
    random.seed(int(seeds[1]))
    torch.default_generator.manual_seed(int(seeds[0]) << 32 | int(seeds[1]))
    try:
        return getitem(self, index)
    finally:
        np.random.set_state(saved[0])
        random.setstate(saved[1])
        torch.set_rng_state(saved[2])


_MIXINS = {
    # samplers stay in the main process; datasets go to spawned workers
    'PositionedSampler': dict(skip=_sampler_skip, __iter__=_sampler_iter),
    'SeededSamples': dict(__getitem__=_dataset_getitem,
                          __reduce_ex__=_reduce_ex),
}


def seed_samples(dataloader, seed: int, rank: int = 0) -> bool:
    """Make every training sample's data augmentation a function of (seed,
    rank, its position in the sample stream) only, so that it does not
    depend on ``num_workers`` and a resumed run loads exactly what the
    uninterrupted run loaded. Returns False (and changes nothing) for a
    sampler it does not know."""
    sampler = getattr(dataloader, 'sampler', None)
    known = getattr(sampler, '_selds_kind', None) == 'PositionedSampler' or \
        type(sampler).__name__ in ('InfiniteSampler', 'DefaultSampler')
    if not known:
        return False
    _extend(sampler, 'PositionedSampler',
            _selds_position=getattr(sampler, '_selds_position', 0))
    _extend(dataloader.dataset, 'SeededSamples', _selds_seed=int(seed),
            _selds_rank=int(rank))
    return True


@HOOKS.register_module()
class ExactResumeHook(Hook):
    """Make ``--resume`` continue the random streams of the interrupted run.

    * Every checkpoint stores the states of the torch, CUDA, numpy and Python
      generators (``checkpoint['rng_states']``; ``publish_model`` strips
      them with the rest of the training state).
    * When a run resumes, they are put back right before its first batch
      is fetched (after mmengine has moved the sampler to its position and
      the data loader has drawn its seed), which is where the uninterrupted
      run went on from that checkpoint.
    * Validation during training draws no number from the training
      streams: they are saved before it and put back after it, so that a
      run resumed from a checkpoint written before a validation matches one
      that validated, and ``val_interval`` does not change the weights.

    * Each training sample is loaded with its own seed, derived from the
      run's seed, the rank and the sample's position in the stream
      (``seed_samples=True``): data augmentation no longer depends on which
      process loads a sample, so worker processes (``num_workers > 0``),
      whose generators are not in the checkpoint, resume exactly too, and
      the augmentation is the same for any ``num_workers``.

    In a distributed run, rank 0's states are saved and put back on every
    rank, which is exact when the ranks share one seed (mmengine's default,
    ``randomness.diff_rank_seed=False``).

    Args:
        seed_samples (bool): seed every training sample by its position.
            Without it, a resumed run with ``num_workers > 0`` restarts the
            workers' generators from their seeds and augments differently
            from the uninterrupted run. Default: True.
    """

    priority = 'VERY_HIGH'

    def __init__(self, seed_samples: bool = True) -> None:
        self.seed_samples = seed_samples
        self._pending: Optional[Dict[str, Any]] = None
        self._val_states: Optional[Dict[str, Any]] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint[RNG_KEY] = get_rng_states()

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        if not getattr(runner, '_resume', False):
            return  # load_from: a new run, not a continuation
        states = checkpoint.get(RNG_KEY)
        if states is None:
            print_log('ExactResumeHook: the checkpoint holds no random '
                      'states (written without this hook); the resumed run '
                      'draws other random numbers than the interrupted one',
                      logger='current')
            return
        self._pending = states

    def before_train(self, runner) -> None:
        if self.seed_samples and not seed_samples(
                runner.train_dataloader, runner.seed, get_rank()):
            print_log('ExactResumeHook: unknown sampler '
                      f'{type(runner.train_dataloader.sampler).__name__}; '
                      'training samples are not seeded by position, so a '
                      'resumed run with num_workers > 0 augments differently',
                      logger='current')
        if self._pending is None:
            return
        if get_world_size() > 1 and runner._randomness_cfg.get(
                'diff_rank_seed', False):
            print_log('ExactResumeHook: diff_rank_seed=True, but only rank '
                      "0's random states are saved: the other ranks do not "
                      'resume exactly', logger='current')
        loop = runner.train_loop
        if hasattr(loop, 'dataloader_iterator'):  # iteration-based loop
            loop.dataloader_iterator = _RestoreBeforeNext(
                loop.dataloader_iterator, self._pending)
        else:  # epoch-based: checkpoints are written at epoch ends
            set_rng_states(self._pending)
        self._pending = None

    def before_val(self, runner) -> None:
        self._val_states = get_rng_states()

    def after_val(self, runner) -> None:
        if self._val_states is not None:
            set_rng_states(self._val_states)
            self._val_states = None
