"""Detect TB on X-rays: draw the boxes (class, score) onto PNGs and write a json of detections.

    python tools/infer.py CONFIG CHECKPOINT INPUT [INPUT ...] [--out DIR] [--score-thr 0.3]

INPUT: an image, a folder (searched recursively) or a list file (.txt, one image per line;
relative lines are looked up next to the list, then in ../imgs/ as in TBX11K's lists/).
Writes DIR/vis/<name>.png and DIR/detections.json (format: tbx11k/apis/inference.py). Checkpoints
with EMA: the EMA weights by default (--weights raw for the training weights).
"""
import argparse
import os.path as osp
import sys
import warnings

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # this repo's tbx11k
# setuptools deprecates pkg_resources, which mmengine imports to look packages up: a
# warning at every start that no user of these tools can act on
warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                        category=UserWarning)


def score_threshold(text: str) -> float:
    """--score-thr: a score in [0, 1] (30 meant as a percentage kept nothing, nan everything)."""
    try:
        value = float(text)
    except ValueError:
        value = float('nan')
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f'must be a score from 0 to 1 (e.g. 0.3), not {text!r}')
    return value


def parse_args(argv=None) -> argparse.Namespace:
    from tbx11k.utils import KeyValueDictAction
    from tbx11k.utils.safe_checkpoint import add_trust_checkpoint_argument
    p = argparse.ArgumentParser(description='Detect TB on X-rays, draw and save the detections')
    p.add_argument('config', help='model config (e.g. configs/dino_tbx11k_1gpu.py)')
    p.add_argument('checkpoint', help='trained checkpoint')
    p.add_argument('inputs', nargs='+', metavar='INPUT', help='image, folder or list file')
    p.add_argument('--out', default='work_dirs/infer', help='output folder (default: %(default)s)')
    p.add_argument('--score-thr', type=score_threshold, default=0.3,
                   help='draw and keep detections scoring at least this (default: %(default)s)')
    p.add_argument('--weights', choices=['ema', 'raw'], default='ema',
                   help='for EMA checkpoints: the EMA weights (default) or the training weights')
    p.add_argument('--device', default=None, help='cuda:0, cpu, ... (default: cuda:0 if present)')
    p.add_argument('--no-draw', action='store_true', help='write the json only')
    p.add_argument('--no-progress', action='store_true', help='no progress bar')
    p.add_argument('--cfg-options', nargs='+', action=KeyValueDictAction,
                   help='override settings in the config, key=value (mmengine syntax)')
    add_trust_checkpoint_argument(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from tbx11k.apis.inference import collect_images, load_detector, run_inference
    from tbx11k.engine.exit_codes import EXIT_UNTRUSTED_CHECKPOINT
    from tbx11k.utils.safe_checkpoint import UntrustedCheckpointError, apply_trust_option
    apply_trust_option(args)
    try:
        images = collect_images(args.inputs, skip=args.out)  # not the drawings of an earlier run
    except FileNotFoundError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    device = args.device or ('cuda:0' if torch.cuda.is_available() else 'cpu')
    try:
        torch.device(device)
    except RuntimeError:
        print(f'error: --device {device} is not a torch device (cpu, cuda, cuda:1, ...)',
              file=sys.stderr)
        return 2
    if device.startswith('cuda') and not torch.cuda.is_available():
        print(f'error: --device {device}, but this torch sees no CUDA GPU; use --device cpu',
              file=sys.stderr)
        return 2
    try:
        detector = load_detector(args.config, args.checkpoint, device, args.weights,
                                 args.cfg_options)
    except UntrustedCheckpointError as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_UNTRUSTED_CHECKPOINT
    except (ValueError, FileNotFoundError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(f'{args.checkpoint}: {detector.weights}, classes {list(detector.classes)}, '
          f'{len(images)} image(s), device {device}')
    if detector.weights_warning:
        print(f'warning: {detector.weights_warning}', file=sys.stderr)
    several = len(images) > 1 or any(osp.isdir(i) for i in args.inputs)
    try:
        result = run_inference(detector, images, args.out, args.score_thr,
                               draw=not args.no_draw, progress=several and not args.no_progress)
    except OSError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    num = sum(len(r['detections']) for r in result['images'])
    with_boxes = sum(1 for r in result['images'] if r['detections'])
    print(f'{num} detection(s) with score >= {args.score_thr} on {with_boxes} of '
          f'{len(images)} image(s)')
    if not args.no_draw:
        print(f'drawn: {osp.join(args.out, "vis")}/')
    print(f'json: {osp.join(args.out, "detections.json")}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
