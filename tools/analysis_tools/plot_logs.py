"""PNG plots of a training run from its mmengine logs (all sessions of a work dir, merged).

    python tools/analysis_tools/plot_logs.py WORK_DIR [--out DIR] \\
        [--metrics 'tbx11k/*AP50*' ...] [--all-layers]

Writes losses.png (loss terms vs optimizer step), lr.png (LR vs optimizer step),
val_metrics.png (val metrics vs epoch, when the run validated) and overview.png to
WORK_DIR/plots/ (or --out). Reads WORK_DIR/<timestamp>/vis_data/scalars.json; after resumes the
later session wins from the step it restarted at. See tbx11k/apis/log_plots.py.
"""
import argparse
import os.path as osp
import sys

# this repo's tbx11k: tools/<folder>/<tool>.py is three levels below the repo root
sys.path.insert(0, osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__)))))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description='Plot losses, LR and val metrics of a training run')
    p.add_argument('work_dir', help='work dir of tools/train.py (or one <timestamp> session)')
    p.add_argument('--out', help='output folder (default: WORK_DIR/plots)')
    p.add_argument('--metrics', nargs='+', metavar='PATTERN',
                   help="val metric keys to plot, shell patterns (default: the main TB AP, FROC "
                   "and AUC keys)")
    p.add_argument('--all-layers', action='store_true',
                   help='also plot the loss terms of the intermediate decoder layers')
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    from tbx11k.apis.log_plots import plot_logs
    if args.out and osp.exists(args.out) and not osp.isdir(args.out):
        print(f'error: --out {args.out} is a file: give a folder for the plots', file=sys.stderr)
        return 2
    if not osp.exists(args.work_dir):
        print(f'error: no such folder: {args.work_dir}', file=sys.stderr)
        return 2
    try:
        summary = plot_logs(args.work_dir, args.out, args.metrics, args.all_layers)
    except (OSError, ValueError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    steps = summary['steps']
    print(f"{args.work_dir}: {len(summary['sessions'])} session(s) "
          f"{', '.join(summary['sessions'])}; {summary['train_records']} train records"
          + (f' (optimizer steps {steps[0]}..{steps[1]})' if steps else '')
          + f"; val at epochs {summary['val_epochs'] or 'none'}"
          + (f"; {summary['bad_lines']} unreadable line(s) skipped" if summary['bad_lines']
             else ''))
    for path in summary['files']:
        print(f'wrote {path}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
