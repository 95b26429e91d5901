#!/usr/bin/env python
"""Write a small synthetic TBX11K (official layout and json quirks).

Example:
    python tools/make_synthetic_tbx11k.py data/TBX11K-synth --num-train 24 --size 512
"""
import argparse
import json
import os.path as osp
import sys

sys.path.insert(0, osp.dirname(osp.dirname(osp.abspath(__file__))))  # this repo's tbx11k
from tbx11k.datasets.synthetic import format_summary, make_synthetic_tbx11k  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument('root', help='output folder (TBX11K root)')
    p.add_argument('--num-train', type=int, default=24,
                   help='images of TBX11K_train.json')
    p.add_argument('--num-val', type=int, default=12, help='images of TBX11K_val.json')
    p.add_argument('--num-test', type=int, default=8,
                   help='images of the unlabelled test split (all_test.json)')
    p.add_argument('--num-extra', type=int, default=8,
                   help='images of the extra public sets (no boxes)')
    p.add_argument('--seed', type=int, default=0,
                   help='random seed: the same seed and options write the same files')
    p.add_argument('--size', type=int, default=512, help='image side in pixels (square films)')
    p.add_argument('--tb-fraction', type=float, default=0.5,
                   help='fraction of each split that is TB films (1 to 5 lesion boxes)')
    p.add_argument('--healthy-fraction', type=float, default=0.25,
                   help='fraction of each split that is healthy films (the rest: sick, non-TB)')
    p.add_argument('--duplicate-pairs', type=int, default=None,
                   help='byte-identical train/val sick pairs (None: about 5%% of the val sick '
                   'films, at least 1)')
    p.add_argument('--lesion-scale', type=float, default=1.0,
                   help='multiply every lesion box side by this (larger: easier to learn)')
    p.add_argument('--lesion-contrast', type=float, default=1.0,
                   help='multiply the brightness lesions add by this (larger: easier to learn)')
    p.add_argument('--max-lesions', type=int, default=None,
                   help='at most this many boxed lesions per TB image (None: 1-5 as the image '
                   'type draws them)')
    p.add_argument('--overwrite', action='store_true',
                   help='replace imgs/, annotations/, lists/ under ROOT')
    p.add_argument('--json', action='store_true',
                   help='print the summary as json')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        summary = make_synthetic_tbx11k(
            args.root,
            num_train=args.num_train,
            num_val=args.num_val,
            num_test=args.num_test,
            num_extra=args.num_extra,
            seed=args.seed,
            image_size=args.size,
            tb_fraction=args.tb_fraction,
            healthy_fraction=args.healthy_fraction,
            num_duplicate_pairs=args.duplicate_pairs,
            lesion_scale=args.lesion_scale,
            lesion_contrast=args.lesion_contrast,
            max_lesions=args.max_lesions,
            overwrite=args.overwrite)
    except (FileExistsError, ValueError) as e:
        print(f'error: {e}', file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2) if args.json else
          format_summary(summary))
    made = len(summary['duplicate_pairs'])
    if args.duplicate_pairs is not None and made < args.duplicate_pairs:
        print(f'warning: --duplicate-pairs {args.duplicate_pairs}: made {made}, as many as there '
              'are sick images in both train and val (raise --num-train/--num-val)',
              file=sys.stderr)
    return 0


if __name__ == '__main__':
    sys.exit(main())
