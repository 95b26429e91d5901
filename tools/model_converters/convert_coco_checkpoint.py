"""Adapt mmdet's COCO DINO checkpoint (80 classes) to the TBX11K classes, for ``load_from``.

    python tools/model_converters/convert_coco_checkpoint.py \\
        checkpoints/dino-4scale_r50_8xb2-12e_coco_20221202_182705-55b2bba2.pth \\
        checkpoints/dino-4scale_r50_coco_tbx11k.pth --check-config configs/dino_tbx11k_1gpu.py

The classification branches (every decoder layer and the encoder) and the denoising label
embedding are re-initialised as mmdet initialises a new DINO; everything else is kept. Prints what
changed. Exit status 2 when the input is not an mmdet DINO checkpoint, already has the target
classes (a converted or TBX11K-trained checkpoint: its trained classifiers would be lost; --force
converts anyway) or does not fit the config; exit status 7 when it holds Python objects besides
weights and training state (refused unloaded: unpickling could run code; --trust-checkpoint for a
file you trust).
See tbx11k/apis/checkpoint_conversion.py.
"""
import argparse
import io
import os.path as osp
import sys
import warnings

# this repo's tbx11k: tools/<folder>/<tool>.py is three levels below the repo root
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))
# setuptools deprecates pkg_resources, which mmengine imports to look packages up: a
# warning at every start that no user of these tools can act on
warnings.filterwarnings('ignore', message='pkg_resources is deprecated as an API',
                        category=UserWarning)


def probability(text: str) -> float:
    """--prior-prob: strictly between 0 and 1 (the bias is -log((1 - p) / p))."""
    try:
        value = float(text)
    except ValueError:
        value = float('nan')
    if not 0.0 < value < 1.0:
        raise argparse.ArgumentTypeError(f'must be a probability strictly between 0 and 1 (e.g. '
                                         f'0.01), not {text!r}')
    return value


def parse_args(argv=None) -> argparse.Namespace:
    from tbx11k.utils.safe_checkpoint import add_trust_checkpoint_argument
    p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    p.add_argument('input', help='mmdet DINO checkpoint (e.g. the COCO model zoo file)')
    p.add_argument('output', help='converted checkpoint to write')
    p.add_argument('--classes', nargs='+', default=None,
                   help='target class names, in label order (default: those of --check-config, '
                   'else ActiveTuberculosis ObsoletePulmonaryTuberculosis)')
    p.add_argument('--map', nargs='+', default=[], metavar='TARGET=SOURCE',
                   help='copy the rows of a source class instead of re-initialising a target '
                   'class (not meaningful for TBX11K; for other data sets)')
    p.add_argument('--seed', type=int, default=0, help='seed of the re-initialisation')
    p.add_argument('--prior-prob', type=probability, default=0.01,
                   help='foreground prior of the new classifier biases (mmdet: 0.01)')
    p.add_argument('--check-config', metavar='CONFIG',
                   help='build this config\'s model and check that the result fits it exactly')
    p.add_argument('--force', action='store_true',
                   help='convert even a checkpoint that already has the target classes (a '
                   'converted or TBX11K-trained one), re-initialising its trained classifiers')
    p.add_argument('--cfg-options', nargs='+', default=[], metavar='KEY=VALUE',
                   help='overrides for --check-config (mmengine syntax)')
    add_trust_checkpoint_argument(p)
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    import torch

    from tbx11k.apis.checkpoint_conversion import (
        TBX11K_CLASSES,
        AlreadyConverted,
        NotADINOCheckpoint,
        build_model_from_config,
        check_fits_model,
        config_classes,
        convert_dino_checkpoint,
    )
    from tbx11k.compat.torch_load import load_local_checkpoint
    from tbx11k.engine.exit_codes import EXIT_UNTRUSTED_CHECKPOINT
    from tbx11k.utils.atomic_io import atomic_write_bytes
    from tbx11k.utils.safe_checkpoint import UntrustedCheckpointError, apply_trust_option
    apply_trust_option(args)

    class_map = {}
    for item in args.map:
        target, sep, source = item.partition('=')
        if not sep:
            print(f'error: --map wants TARGET=SOURCE, got {item!r}', file=sys.stderr)
            return 2
        class_map[target] = source
    classes = args.classes
    if classes is None and args.check_config:
        import tbx11k  # noqa: F401  (registers the config's types)
        classes = config_classes(args.check_config)
    classes = tuple(classes or TBX11K_CLASSES)

    if not osp.isfile(args.input):
        print(f'error: {args.input} does not exist', file=sys.stderr)
        return 2
    if osp.isdir(args.output):
        print(f'error: the output {args.output} is a folder: give the file to write, e.g. '
              f'{osp.join(args.output, "dino_tbx11k_init.pth")}', file=sys.stderr)
        return 2
    if osp.exists(args.output) and osp.samefile(args.input, args.output):
        print(f'error: the output {args.output} is the input: converting in place would replace '
              'the COCO weights; write the converted checkpoint to another file', file=sys.stderr)
        return 2
    try:  # weights and training state only: nothing in the file runs (--trust-checkpoint)
        checkpoint = load_local_checkpoint(args.input, map_location='cpu')
    except UntrustedCheckpointError as error:
        print(f'error: {error}', file=sys.stderr)
        return EXIT_UNTRUSTED_CHECKPOINT
    except Exception as error:  # not a torch file, truncated, another pickle
        print(f'error: cannot load {args.input} as a checkpoint ({type(error).__name__}: '
              f'{error})', file=sys.stderr)
        return 2
    if not isinstance(checkpoint, dict):
        print(f'error: {args.input} holds a {type(checkpoint).__name__}, not a checkpoint dict',
              file=sys.stderr)
        return 2
    try:
        converted, report = convert_dino_checkpoint(checkpoint, classes, class_map, args.seed,
                                                    args.prior_prob, source=args.input,
                                                    force=args.force)
    except (NotADINOCheckpoint, AlreadyConverted) as error:
        print(f'error: {args.input}: {error}', file=sys.stderr)
        return 2
    except ValueError as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    print(f'{args.input}:')
    print('\n'.join(report.lines()))

    if args.check_config:
        from mmengine.config import DictAction
        parser = argparse.ArgumentParser()
        parser.add_argument('--o', nargs='*', action=DictAction, default={})
        options = parser.parse_args(['--o'] + args.cfg_options).o if args.cfg_options else {}
        import tbx11k  # noqa: F401
        model = build_model_from_config(args.check_config, options)
        problems = check_fits_model(converted['state_dict'], model)
        if problems:
            print(f'error: the converted weights do not fit {args.check_config} '
                  f'({len(problems)} differences):\n  ' + '\n  '.join(problems[:20]),
                  file=sys.stderr)
            return 2
        print(f'  fits {args.check_config}: no missing, unexpected or reshaped keys')

    buffer = io.BytesIO()
    torch.save(converted, buffer)
    atomic_write_bytes(buffer.getvalue(), args.output)  # no half-written file, no stray .tmp
    print(f'wrote {args.output}  (use: --cfg-options load_from={args.output} '
          'model.backbone.init_cfg=None)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
