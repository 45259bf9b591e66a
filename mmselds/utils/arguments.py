"""Argument types of the command-line tools (argparse only: the tools that
run with torch alone use them too). A bad value exits with status 2 and a
message naming the flag and the value, as argparse does."""
import argparse
import os
import os.path as osp
from typing import Callable


def summary(doc: str) -> str:
    """The first paragraph of a tool's docstring on one line: its
    ``--help`` description (the first line alone may stop mid-sentence)."""
    return ' '.join(doc.strip().split('\n\n')[0].split())


def int_at_least(least: int) -> Callable[[str], int]:
    """The type of an integer >= ``least``, e.g. ``int_at_least(32)``."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'not an integer: {text!r}')
        if value < least:
            raise argparse.ArgumentTypeError(
                f'must be >= {least}, got {text}')
        return value

    parse.__name__ = f'an integer >= {least}'
    return parse


positive_int = int_at_least(1)
non_negative_int = int_at_least(0)


def fraction(what: str) -> Callable[[str], float]:
    """The type of a number in [0, 1] (NaN refused), called ``what`` in
    the error, e.g. ``fraction('a down-sampling ratio')``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f'not a number: {text!r}')
        if not 0.0 <= value <= 1.0:  # also refuses nan
            raise argparse.ArgumentTypeError(
                f'must be {what} in [0, 1], got {text}')
        return value

    parse.__name__ = what  # argparse's fallback message names it
    return parse


def torch_device(text: str):
    """A torch device that this machine has: ``cpu``, ``cuda``,
    ``cuda:1``, ... (a CUDA device without CUDA is refused here, not by a
    deep ``Torch not compiled with CUDA enabled``)."""
    import torch
    try:
        dev = torch.device(text)
    except RuntimeError:
        raise argparse.ArgumentTypeError(f'not a device: {text!r}')
    if dev.type == 'cuda':
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(
                f'{text}: no CUDA device on this machine (torch '
                f'{torch.__version__}, CUDA {torch.version.cuda})')
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f'{text}: this machine has {torch.cuda.device_count()} '
                'CUDA devices')
    return text


def output_file(text: str) -> str:
    """A file a tool will write (``--out``, ``--plot``): refused here, before
    any work, when it is empty, a folder, ends in ``/``, or lies under a
    folder that cannot be written; a folder that does not exist yet is
    fine (:func:`parent_made` creates it when the file is written)."""
    if not text:
        raise argparse.ArgumentTypeError('an empty path')
    if text.endswith(('/', os.sep)) or osp.isdir(text):
        raise argparse.ArgumentTypeError(f'{text} is a folder, not a file')
    folder = osp.dirname(osp.abspath(text))
    existing = folder
    while not osp.exists(existing):
        existing = osp.dirname(existing)
    if not osp.isdir(existing) or not os.access(existing, os.W_OK):
        raise argparse.ArgumentTypeError(
            f'cannot write {text}: {existing} is not a writable folder')
    return text


output_file.__name__ = 'a file to write'


def parent_made(path: str) -> str:
    """``path``, after creating its folder (as mmengine creates a work
    dir)."""
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    return path
