"""Command line of ``tools/analysis_tools/benchmark.py``."""


from .cases import AMP_DTYPES, VARIANTS, BenchmarkOptions
from .report import format_table
from .run import run_benchmark


def parse_args(argv=None):
    import argparse

    from mmengine.config import DictAction
    parser = argparse.ArgumentParser(
        description='Time training (and inference) of a config beside stock mmdet DINO on '
        'synthetic TBX11K data, in one process.')
    parser.add_argument('config')
    parser.add_argument('--steps', type=int, default=20, help='timed optimizer steps (default 20)')
    parser.add_argument('--warmup', type=int, default=5,
                        help='optimizer steps before the timing starts (default 5)')
    parser.add_argument('--infer-steps', type=int,
                        help='timed inference batches (default: --steps)')
    parser.add_argument('--infer-batch-size', type=int, default=1,
                        help='> 1: also time inference at this batch size (ours and stock)')
    parser.add_argument('--num-images', type=int, default=64, help='synthetic train images')
    parser.add_argument('--image-size', type=int, default=512, help='synthetic image side')
    parser.add_argument('--data-root', help='TBX11K-format root to use (made there if missing; '
                        'default: a temporary one)')
    parser.add_argument('--no-stock', action='store_true', help='skip the stock mmdet baseline')
    parser.add_argument('--batch2', action='store_true', help='also batch 2 x acc 1 '
                        '(accumulation overhead), for ours and stock')
    parser.add_argument('--infer', action='store_true', help='also inference img/s and memory')
    parser.add_argument('--profile', action='store_true', help='also profile 2 optimizer steps '
                        'of ours and stock (aten ops, kernel launches, syncs, GPU busy fraction, '
                        'top host ops)')
    parser.add_argument('--amp', action='store_true', help='mixed precision (AmpOptimWrapper, as '
                        'tools/train.py --amp) for every case; GPU only')
    parser.add_argument('--amp-dtype', choices=AMP_DTYPES, default='float16')
    parser.add_argument('--device', choices=['cuda', 'cpu'], help='default: cuda when present')
    parser.add_argument('--variants', default='', help='comma-separated speed-up switches, each '
                        f'timed on its own against ours: {", ".join(VARIANTS)}, or "all"')
    parser.add_argument('--time-budget', type=float, default=0.0,
                        help='seconds; cases not started by then are skipped (0: no limit)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override settings of CONFIG (both ours and stock), key=value')
    parser.add_argument('--json', help='write every figure to this file')
    parser.add_argument('--keep-work-dir', action='store_true')
    return parser.parse_args(argv)


def options_from_args(args) -> BenchmarkOptions:
    variants = [v for v in args.variants.split(',') if v]
    if variants == ['all']:
        variants = list(VARIANTS)
    return BenchmarkOptions(
        config=args.config, steps=args.steps, warmup=args.warmup, num_images=args.num_images,
        image_size=args.image_size, data_root=args.data_root, stock=not args.no_stock,
        batch2=args.batch2, infer=args.infer, profile=args.profile,
        amp=args.amp_dtype if args.amp else None,
        device=args.device, cfg_options=dict(args.cfg_options) if args.cfg_options else None,
        variants=variants, time_budget=args.time_budget, infer_steps=args.infer_steps,
        infer_batch_size=args.infer_batch_size,
        keep_work_dir=args.keep_work_dir)


def main(argv=None) -> int:
    args = parse_args(argv)
    report = run_benchmark(options_from_args(args), json_path=args.json)
    print(format_table(report))
    if args.json:
        print(f'figures written to {args.json}')
    return 0 if all(c['status'] == 'ok' or c['status'].startswith('skipped')
                    for c in report['cases']) else 1
