"""The neck that hands the backbone's selection on to the decode head."""
from typing import Sequence

from mmseg.registry import MODELS
from torch import Tensor, nn

from mmselds.ops import MixedFeature, SelectiveOutputs


@MODELS.register_module()
class SelectivePoolingNeck(nn.Module):
    """Passes a selective backbone's outputs to selective and stock heads.

    mmseg's ``EncoderDecoder.extract_feat`` runs ``backbone -> neck`` once
    and gives the neck's output to both the decode head and the auxiliary
    head, which index it (``inputs[in_index]``). ``SelDSResNetV1c`` returns
    a :class:`~mmselds.ops.SelectiveOutputs`: the dense OS8 stage outputs
    (the densified maps every stock head expects) that also carry
    ``mixed``, the stage-4 mixed-resolution feature before densifying, and
    its ``cells``. This neck returns that same object: a selective head
    (``SelDSASPPHead``) reads ``mixed`` and keeps each cell at its own
    resolution, while a head that is not selective (the auxiliary FCN head,
    any stock mmseg head) indexes the dense tuple. The dense stage-4 map is
    the backbone's densified output, so no second densify runs. A plain
    tuple or list (a dense backbone) passes through as a tuple.

    The neck has no parameters, so checkpoints are unchanged.
    """

    def forward(self, inputs: Sequence[Tensor]) -> tuple:
        if isinstance(inputs, SelectiveOutputs):
            mixed = inputs.mixed
            if mixed is not None and len(inputs) and \
                    inputs.output_shape(-1) != tuple(mixed.shape):
                raise ValueError(
                    f'the last output {inputs.output_shape(-1)} is not the '
                    f'densified mixed feature {tuple(mixed.shape)}')
            return inputs
        if not isinstance(inputs, (tuple, list)) or not all(
                isinstance(x, Tensor) for x in inputs):
            raise ValueError('SelectivePoolingNeck takes the tuple of '
                             'feature maps a backbone returns, got '
                             f'{type(inputs).__name__}')
        if isinstance(getattr(inputs, 'mixed', None), MixedFeature):
            return SelectiveOutputs(inputs, inputs.mixed,
                                    getattr(inputs, 'cells', None))
        return tuple(inputs)
