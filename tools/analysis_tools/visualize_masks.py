"""Draw the down-sampling mask a selective model predicts on images.

Full-resolution (OS8) cells are outlined, down-sampled (OS16) cells tinted;
one PNG per image, the size of the image, in --out-dir.

Example::

    python tools/analysis_tools/visualize_masks.py CONFIG CHECKPOINT \
        demo/*.png --out-dir work_dirs/masks --threshold 0.5
"""
import argparse
import os
import os.path as osp

import cv2
from mmengine.config import DictAction
from mmseg.apis import inference_model, init_model

import mmselds  # noqa: F401
from mmselds.visualization import overlay_mask


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('images', nargs='+', help='image files')
    p.add_argument('--out-dir', required=True)
    p.add_argument('--threshold', type=float,
                   help='test-time threshold on P(down-sample) '
                   '(default: the config\'s)')
    p.add_argument('--device', default='cpu')
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args()


def main():
    args = parse_args()
    model = init_model(args.config, args.checkpoint, args.device,
                       cfg_options=args.cfg_options)
    if not hasattr(model.backbone, 'mask_head'):
        raise SystemExit(f'{args.config} has no selective down-sampling '
                         'backbone: there is no mask to draw')
    if args.threshold is not None:
        model.backbone.mask_head.threshold = args.threshold
    os.makedirs(args.out_dir, exist_ok=True)
    for path in args.images:
        image = cv2.imread(path)
        if image is None:
            raise SystemExit(f'cannot read image {path}')
        result = inference_model(model, path)
        mask = model.backbone.last_mask[0, 0].cpu().numpy()
        scale = image.shape[0] / result.img_shape[0]
        out = osp.join(args.out_dir,
                       osp.splitext(osp.basename(path))[0] + '_mask.png')
        cv2.imwrite(out, overlay_mask(image, mask, scale))
        print(f'{out}: {1 - mask.mean():.1%} of cells at full resolution')


if __name__ == '__main__':
    main()
