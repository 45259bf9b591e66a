"""Draw the down-sampling mask a selective model predicts on images.

One PNG per image (a folder stands for the images in it and its
subfolders) in --out-dir, as the demo's overlays: left, the image with
down-sampled (OS16) cells tinted and full-resolution (OS8) cells outlined;
right, the model's prediction with the full-resolution cells outlined; a
legend below. Images lower than --min-height pixels are enlarged (nearest
neighbour) so that the cells stay visible. An image that cannot be read or
run is reported and skipped; the tool then lists the failures and exits
with status 1.

The mask is the model's test-time decision (the checkpoint's rule, as
``tools/test.py``), or ``P(down-sample) > --threshold``.

Example::

    python tools/analysis_tools/visualize_masks.py CONFIG CHECKPOINT \
        demo/*.png --out-dir work_dirs/masks
    python tools/analysis_tools/visualize_masks.py CONFIG CHECKPOINT \
        data/cityscapes/leftImg8bit/val/frankfurt --out-dir work_dirs/masks
"""
import argparse
import os
import os.path as osp
import sys

# before mmseg.apis, whose imports print mmcv-lite's and the onedl fork's
# misleading notices that ``import mmselds`` drops
import mmselds  # noqa: F401

# isort: split
import cv2
from mmengine.config import DictAction

from mmselds.apis import inference_model, init_model
from mmselds.utils.arguments import fraction, positive_int, torch_device
from mmselds.utils.launch import run_cli
from mmselds.visualization import mask_panel, palette_image, result_cells


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('config')
    p.add_argument('checkpoint')
    p.add_argument('images', nargs='+', help='image files or folders of '
                   'images')
    p.add_argument('--out-dir', required=True)
    p.add_argument('--threshold', type=fraction('a probability'), default=None,
                   help='explicit test-time threshold on P(down-sample), in '
                   '[0, 1] (default None: the model\'s own decision, as '
                   'tools/test.py)')
    p.add_argument('--min-height', type=positive_int, default=256,
                   help='enlarge lower images to at least this height')
    p.add_argument('--device', default='cpu', type=torch_device)
    p.add_argument('--cfg-options', nargs='+', action=DictAction)
    return p.parse_args(argv)


IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg', '.bmp', '.tif', '.tiff',
                    '.webp')


def output_path(path: str, out_dir: str) -> str:
    return osp.join(out_dir, osp.splitext(osp.basename(path))[0] +
                    '_mask.png')


def expand_images(paths, out_dir: str) -> list:
    """The image files of ``paths``: a file as it is (checked when it is
    drawn), a folder as the images in it and its subfolders, in order,
    except those in ``out_dir`` (earlier figures). Two images whose
    figures would have the same name are an error naming them."""
    skip = osp.join(osp.abspath(out_dir), '')
    files = []
    for path in paths:
        if not osp.isdir(path):
            files.append(path)
            continue
        found = sorted(
            osp.join(root, name) for root, _, names in os.walk(path)
            for name in names if name.lower().endswith(IMAGE_EXTENSIONS)
            and not osp.abspath(osp.join(root, name)).startswith(skip))
        if not found:
            raise SystemExit(f'error: the folder {path} holds no images '
                             f'({", ".join(IMAGE_EXTENSIONS)})')
        files += found
    seen = {}
    for path in files:
        other = seen.setdefault(output_path(path, out_dir), path)
        if other != path:
            raise SystemExit(f'error: {other} and {path} would both be drawn '
                             f'to {output_path(path, out_dir)}; give them '
                             'in separate runs with separate --out-dir')
    return files


def draw(model, path: str, out_dir: str, min_height: int) -> str:
    """Write the mask figure of one image; return the output path."""
    if not osp.isfile(path):
        raise OSError('no such file')
    image = cv2.imread(path)
    if image is None:
        raise OSError('not a readable image (corrupt or unsupported format)')
    result = inference_model(model, image)
    mask, scale = result_cells(result, image.shape[0])
    palette = model.dataset_meta['palette']
    pred = palette_image(result.pred_sem_seg.data[0].cpu().numpy(), palette)
    out = output_path(path, out_dir)
    cv2.imwrite(out, mask_panel(image, mask, scale, pred, min_height))
    print(f'{out}: {1 - mask.mean():.1%} of cells at full resolution')
    return out


def main(argv=None):
    args = parse_args(argv)
    images = expand_images(args.images, args.out_dir)
    model = init_model(args.config, args.checkpoint, args.device,
                       cfg_options=args.cfg_options)
    if not hasattr(model.backbone, 'mask_head'):
        raise SystemExit(f'error: {args.config} has no selective '
                         'down-sampling backbone: there is no mask to draw')
    if args.threshold is not None:
        model.backbone.mask_head.threshold = args.threshold
    print(f'mask decision: {model.backbone.mask_head.decision_rule()}')
    os.makedirs(args.out_dir, exist_ok=True)
    failures = []
    for path in images:
        try:
            draw(model, path, args.out_dir, args.min_height)
        except Exception as error:  # report, go on with the other images
            failures.append((path, f'{type(error).__name__}: {error}'))
            print(f'{path}: skipped ({failures[-1][1]})', file=sys.stderr)
    if failures:
        lines = '\n'.join(f'  {path}: {why}' for path, why in failures)
        raise SystemExit(f'error: {len(failures)} of {len(images)} '
                         f'images failed:\n{lines}')


if __name__ == '__main__':
    run_cli(main)
