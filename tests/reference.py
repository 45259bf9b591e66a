"""Plain float64 references written from DESIGN §2-§3, independent of the
library's code paths (built from F.conv2d, slicing and masking)."""
import torch
import torch.nn.functional as F


def up(x):
    """Nearest x2 up-sampling by repetition."""
    return x.repeat_interleave(2, -2).repeat_interleave(2, -1)


def quads(x):
    """The 4 sub-pixels of every 2x2 cell: TL, TR, BL, BR."""
    return [x[..., 0::2, 0::2], x[..., 0::2, 1::2],
            x[..., 1::2, 0::2], x[..., 1::2, 1::2]]


def pool(x, mode, logits=None):
    q = quads(x)
    if mode == 'stride':
        return q[0]
    if mode == 'avg':
        return (q[0] + q[1] + q[2] + q[3]) / 4
    if mode == 'max':
        return torch.stack(q).amax(0)
    w = logits.softmax(1).to(x.dtype)  # (C, 4)
    return sum(q[k] * w[:, k].view(1, -1, 1, 1) for k in range(4))


def densify(hi, lo, mask):
    m = up(mask)
    return hi * (1 - m) + up(lo) * m


def selective_conv(hi, lo, mask, weight, bias, dilation, mode, logits=None):
    """Output (hi, lo) of a selective conv (DESIGN §3)."""
    k = weight.shape[-1]
    r, rl = dilation, max(dilation // 2, 1)
    v = densify(hi, lo, mask)
    lo_in = lo * mask + pool(hi, mode, logits) * (1 - mask)
    out_hi = F.conv2d(v, weight, bias, padding=r * (k // 2), dilation=r)
    out_lo = F.conv2d(lo_in, weight, bias, padding=rl * (k // 2),
                      dilation=rl)
    return out_hi, out_lo


def entrance_conv(x, weight, bias, dilation):
    """(hi, lo) of the stride-mode stage entrance on a full-res x."""
    r, rl = dilation, max(dilation // 2, 1)
    return (F.conv2d(x, weight, bias, padding=r, dilation=r),
            F.conv2d(x, weight, bias, stride=2, padding=rl, dilation=rl))


def random_mask(n, h, w, density, generator):
    """(n, 1, h, w) mask with round((1 - density) * h * w) down-sampled cells
    per sample (density = fraction kept at full resolution)."""
    mask = torch.zeros(n, h * w)
    k = round((1 - density) * h * w)
    for i in range(n):
        mask[i, torch.randperm(h * w, generator=generator)[:k]] = 1
    return mask.view(n, 1, h, w)
