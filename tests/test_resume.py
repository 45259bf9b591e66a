"""Exact resume (DESIGN I5): a run resumed from a checkpoint ends with the
weights of the uninterrupted run, through tools/train.py --resume."""
import os
import shutil
import sys

import pytest
import torch

from tests.helpers import SELDS_DEMO, cfg_options
from tests.test_tools import run

ITERS, RESUME_AT = 12, 8


def train(work, data_root, *extra, workers=0):
    opts = cfg_options(data_root, **{
        'train_cfg.max_iters': ITERS, 'train_cfg.val_interval': 4,
        'default_hooks.checkpoint.interval': 4,
        'default_hooks.logger.interval': 1,
        'train_dataloader.batch_size': 2,
        'randomness.deterministic': True})
    if workers:  # worker processes load the training batches
        opts += [f'train_dataloader.num_workers={workers}',
                 'train_dataloader.persistent_workers=True']
    return run([sys.executable, 'tools/train.py', SELDS_DEMO, '--work-dir',
                work, *extra, '--cfg-options', *opts])


def load(path):
    return torch.load(path, map_location='cpu', weights_only=False)


def weights(path):
    return load(path)['state_dict']


def same(x, y):
    """Bit-equal, NaN equal to NaN (e.g. an unset calibration buffer)."""
    if x.is_floating_point() and x.shape == y.shape:
        return bool(((x == y) | (x.isnan() & y.isnan())).all())
    return torch.equal(x, y)


def differing(a, b):
    assert a.keys() == b.keys()
    return [k for k in a if not same(a[k], b[k])]


def interrupted_copy(src, dst, strip_rng=False):
    """A work dir as a run killed right after its RESUME_AT checkpoint
    leaves it."""
    os.makedirs(dst)
    ckpt = f'iter_{RESUME_AT}.pth'
    if strip_rng:  # as written before ExactResumeHook existed
        state = load(src / ckpt)
        del state['rng_states']
        torch.save(state, dst / ckpt)
    else:
        shutil.copy(src / ckpt, dst / ckpt)
    (dst / 'last_checkpoint').write_text(str(dst / ckpt))


@pytest.mark.slow
def test_resumed_run_ends_with_the_uninterrupted_weights(demo_data,
                                                         tmp_path):
    full = tmp_path / 'full'
    train(full, demo_data)
    final = weights(full / f'iter_{ITERS}.pth')
    states = load(full / f'iter_{RESUME_AT}.pth')['rng_states']
    assert set(states) >= {'torch', 'numpy', 'python'}
    torch.save(states, tmp_path / 'rng.pth')  # tensors and plain numbers
    torch.load(tmp_path / 'rng.pth', weights_only=True)

    # resumed with 2 worker processes: their generators are not in the
    # checkpoint, but every sample is seeded by its position in the stream
    resumed = tmp_path / 'resumed'
    interrupted_copy(full, resumed)
    out = train(resumed, demo_data, '--resume', workers=2)
    assert f'resumed epoch: 0, iter: {RESUME_AT}' in out
    again = weights(resumed / f'iter_{ITERS}.pth')
    diff = differing(final, again)
    assert diff == [], (len(diff), len(final), diff[:8], out[-3000:])
    # the trained ratio (a buffer of the mask head) continues exactly too
    assert torch.equal(final['backbone.mask_head.trained_ratio'],
                       again['backbone.mask_head.trained_ratio'])

    # control: the same resume without the saved random states diverges,
    # so the check above can fail
    control = tmp_path / 'control'
    interrupted_copy(full, control, strip_rng=True)
    out = train(control, demo_data, '--resume')
    assert 'holds no random states' in out
    assert len(differing(final, weights(control / f'iter_{ITERS}.pth'))) > 10


@pytest.mark.slow
def test_train_tool_adds_exact_resume_to_any_config(demo_data, tmp_path):
    """A config without the hook (the dense OS8 demo config) still gets
    it from tools/train.py: its checkpoints carry the random states."""
    from tests.helpers import DEMO
    config = f'{DEMO}/deeplabv3_r18-d8_1xb8-400it_synthcity-128x256.py'
    run([sys.executable, 'tools/train.py', config, '--work-dir', tmp_path,
         '--cfg-options', *cfg_options(demo_data, **{
             'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2,
             'default_hooks.checkpoint.interval': 2,
             'train_dataloader.batch_size': 2})])
    assert 'rng_states' in load(tmp_path / 'iter_2.pth')


@pytest.mark.slow
def test_resume_of_a_fine_tuning_run(demo_data, tmp_path):
    """--resume on a config whose load_from is its initialisation (the
    dense checkpoint a selective model is fine-tuned from): it continues
    from the work dir's latest checkpoint, exactly, and, with none there,
    starts the run from load_from. It used to resume from load_from and
    stop in the optimizer (different number of parameter groups)."""
    from tests.helpers import DEMO
    dense = tmp_path / 'dense'
    run([sys.executable, 'tools/train.py',
         f'{DEMO}/deeplabv3_r18-d8_1xb8-400it_synthcity-128x256.py',
         '--work-dir', dense, '--cfg-options', *cfg_options(demo_data, **{
             'train_cfg.max_iters': 2, 'train_cfg.val_interval': 2,
             'default_hooks.checkpoint.interval': 2,
             'train_dataloader.batch_size': 2})])
    init = dense / 'iter_2.pth'

    def fine_tune(work, *extra):
        return run([sys.executable, 'tools/train.py', SELDS_DEMO,
                    '--work-dir', work, *extra, '--cfg-options',
                    *cfg_options(demo_data, **{
                        'load_from': init, 'train_cfg.max_iters': 4,
                        'train_cfg.val_interval': 4,
                        'default_hooks.checkpoint.interval': 2,
                        'train_dataloader.batch_size': 2,
                        'randomness.deterministic': True})])

    full = tmp_path / 'full'
    fine_tune(full)
    final = weights(full / 'iter_4.pth')

    resumed = tmp_path / 'resumed'
    resumed.mkdir()
    shutil.copy(full / 'iter_2.pth', resumed / 'iter_2.pth')
    (resumed / 'last_checkpoint').write_text(str(resumed / 'iter_2.pth'))
    out = fine_tune(resumed, '--resume')
    assert f'resuming from {resumed / "iter_2.pth"}, the latest' in out, \
        out[-3000:]
    assert 'resumed epoch: 0, iter: 2' in out
    assert differing(final, weights(resumed / 'iter_4.pth')) == []

    fresh = tmp_path / 'fresh'
    out = fine_tune(fresh, '--resume')
    assert 'no checkpoint in' in out and 'starting the run from it' in out
    assert 'resumed epoch' not in out
    assert differing(final, weights(fresh / 'iter_4.pth')) == []
    # a training state of this model given as load_from is resumed from,
    # as in mmseg (--resume --cfg-options load_from=CKPT)
    chosen = tmp_path / 'chosen'
    out = run([sys.executable, 'tools/train.py', SELDS_DEMO, '--work-dir',
               chosen, '--resume', '--cfg-options', *cfg_options(
                   demo_data, **{'load_from': full / 'iter_2.pth',
                                 'train_cfg.max_iters': 4,
                                 'train_cfg.val_interval': 4,
                                 'default_hooks.checkpoint.interval': 2,
                                 'train_dataloader.batch_size': 2,
                                 'randomness.deterministic': True})])
    assert 'resumed epoch: 0, iter: 2' in out
    assert differing(final, weights(chosen / 'iter_4.pth')) == []


class Noise(torch.utils.data.Dataset):
    """Samples made of numpy, Python and torch random numbers, as a data
    pipeline's augmentations draw them."""

    def __len__(self):
        return 6

    def __getitem__(self, i):
        import random

        import numpy as np
        return torch.tensor([i, np.random.rand(), random.random(),
                             torch.rand(()).item()], dtype=torch.float64)


def noise_loader(workers, seed=3):
    from mmengine.dataset import InfiniteSampler, pseudo_collate

    from mmselds.engine.exact_resume import seed_samples
    dataset = Noise()
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=2, num_workers=workers, collate_fn=pseudo_collate,
        sampler=InfiniteSampler(dataset, seed=seed))
    assert seed_samples(loader, seed=seed)
    return loader


def test_seeded_samples_do_not_depend_on_workers_or_resume():
    import itertools
    main = iter(noise_loader(0))  # (creating it draws the loader's seed)
    before = torch.get_rng_state()
    batches = [torch.stack(b) for b in itertools.islice(main, 6)]
    # loading in the main process drew nothing from its own stream
    assert torch.equal(torch.get_rng_state(), before)
    # two worker processes load the same samples
    workers = [torch.stack(b) for b in itertools.islice(noise_loader(2), 6)]
    for a, b in zip(batches, workers):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # resumed after 2 batches (4 samples): the stream goes on identically
    loader = noise_loader(2)
    loader.sampler.skip(4)
    rest = [torch.stack(b) for b in itertools.islice(loader, 4)]
    for a, b in zip(batches[2:], rest):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # the samples do differ from each other, and with the seed
    values = torch.cat(batches)[:, 1:]
    assert len(set(values[:, 0].tolist())) == len(values)
    other = torch.stack(next(iter(noise_loader(0, seed=4))))
    assert not torch.equal(other[:, 1:], batches[0][:, 1:])
