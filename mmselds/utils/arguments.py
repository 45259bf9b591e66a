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
    """A file a tool will write: its folder is created now (as mmengine
    creates a work dir), so a path in a new folder works and one that
    cannot be written is refused before any work, not after it."""
    if osp.isdir(text):
        raise argparse.ArgumentTypeError(f'{text} is a folder, not a file')
    folder = osp.dirname(osp.abspath(text))
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as e:
        raise argparse.ArgumentTypeError(
            f'cannot create the folder of {text}: {e.strerror or e}')
    if not os.access(folder, os.W_OK):
        raise argparse.ArgumentTypeError(f'{folder} is not writable')
    return text


output_file.__name__ = 'a file to write'
