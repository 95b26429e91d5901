"""The benchmark report: ratios, targets, the table and the JSON file."""
import json
import os
import os.path as osp
from dataclasses import asdict
from typing import Dict, List, Optional, Sequence

from .cases import TARGETS, BenchmarkOptions, CaseResult


def _ratio(a: Optional[float], b: Optional[float]) -> Optional[float]:
    return a / b if a and b else None


def compute_ratios(cases: List[CaseResult]) -> Dict[str, Optional[float]]:
    by = {c.name: c for c in cases if c.ok}

    def ips(name):
        return by[name].img_per_s if name in by else None

    def spi(name):
        return by[name].s_per_image if name in by else None

    ratios = dict(
        train_vs_stock=_ratio(ips('ours'), ips('stock')),
        batch2_vs_stock_batch2=_ratio(ips('ours_batch2'), ips('stock_batch2')),
        accumulation_overhead=_ratio(spi('ours'), spi('ours_batch2')),
        stock_accumulation_overhead=_ratio(spi('stock'), spi('stock_batch2')),
        infer_vs_stock=_ratio(ips('ours_infer'), ips('stock_infer')),
    )
    for case in cases:
        if case.kind == 'infer' and case.name.startswith('ours_infer_b'):
            suffix = case.name[len('ours_infer'):]
            ratios[f'infer{suffix}_vs_stock'] = _ratio(ips(case.name), ips('stock_infer' + suffix))
    for case in cases:
        if case.variant and case.ok:
            baseline = case.baseline or 'ours'
            ratios[f'{case.name}_vs_{baseline}'] = _ratio(case.img_per_s, ips(baseline))
    return ratios


def check_targets(cases: List[CaseResult], ratios: Dict, env: Dict) -> Dict:
    """The issue's targets against this run (they are stated for one H100)."""
    by = {c.name: c for c in cases if c.ok}
    candidates = [c for c in cases if c.ok and c.kind == 'train'
                  and c.batch_size == by['ours'].batch_size
                  and c.accumulative_counts == by['ours'].accumulative_counts
                  and c.implementation == 'ours' and not c.diagnostic] if 'ours' in by else []
    best_train = max(candidates, key=lambda c: c.img_per_s, default=None)
    out = dict(targets=TARGETS, measured_on=env.get('gpu') or 'cpu',
               applies=bool(env.get('gpu') and 'H100' in env['gpu']))
    out['train_img_per_s'] = by['ours'].img_per_s if 'ours' in by else None
    out['best_train_case'] = best_train.name if best_train else None
    out['best_train_img_per_s'] = best_train.img_per_s if best_train else None
    out['train_met'] = bool(best_train and best_train.img_per_s >= TARGETS['train_img_per_s'])
    # the same over the steps that compiled nothing (torch.compile cases that recompiled in the
    # timed steps; a long training pays those compiles once)
    steady = max([c for c in candidates if c.steady_img_per_s],
                 key=lambda c: c.steady_img_per_s, default=None)
    out['best_train_steady_case'] = steady.name if steady else None
    out['best_train_steady_img_per_s'] = steady.steady_img_per_s if steady else None
    out['train_met_steady'] = bool(steady and steady.steady_img_per_s
                                   >= TARGETS['train_img_per_s'])
    ovh = ratios.get('accumulation_overhead')
    out['accumulation_overhead_met'] = bool(ovh is not None
                                            and ovh <= TARGETS['accumulation_overhead'])
    infer = by.get('ours_infer')
    out['infer_img_per_s'] = infer.img_per_s if infer else None
    out['infer_met'] = bool(infer and infer.img_per_s >= TARGETS['infer_img_per_s'])
    best_infer = max([c for c in cases
                      if c.ok and c.kind == 'infer' and c.implementation == 'ours'],
                     key=lambda c: c.img_per_s, default=None)
    out['best_infer_case'] = best_infer.name if best_infer else None
    out['best_infer_img_per_s'] = best_infer.img_per_s if best_infer else None
    out['best_infer_met'] = bool(best_infer and best_infer.img_per_s >= TARGETS['infer_img_per_s'])
    return out


def make_report(opts: BenchmarkOptions, env: Dict, cases: List[CaseResult],
                seconds: float) -> Dict:
    ratios = compute_ratios(cases)
    return dict(environment=env, options=asdict(opts), cases=[asdict(c) for c in cases],
                ratios=ratios, targets=check_targets(cases, ratios, env), total_seconds=seconds)


# --------------------------------------------------------------------------------------------
# output
# --------------------------------------------------------------------------------------------
def _fmt(x, spec='.3f', none='-'):
    return none if x is None else format(x, spec)


def profile_line(p: Optional[Dict]) -> str:
    if not p:
        return 'no profile'
    busy = p['gpu_busy_fraction']
    return (f"per micro-batch: {p['aten_ops_per_micro_batch']:.0f} aten ops, "
            f"{p['kernel_launches_per_micro_batch']:.0f} kernel launches, "
            f"{p['syncs_per_micro_batch']:.0f} syncs, {p['memcpy_calls_per_micro_batch']:.0f} "
            f"copies; GPU busy " + ('-' if busy is None else f'{100 * busy:.0f} %') +
            f" of {p['wall_s']:.2f} s (under the profiler)")


def _warmup_losses(cases: Sequence[Dict]) -> List[str]:
    """A sanity line: the summed loss of the first warm-up optimizer steps (as many as every case
    has) of ours and of its training variants (same data, seed and initial weights: fp32 variants
    agree with ours up to float rounding)."""
    def beside_ours(c: Dict) -> bool:
        return c['name'] == 'ours' or bool(c['variant']) and (c.get('baseline') or 'ours') == 'ours'

    runs = {c['name']: c['warmup_losses'] for c in cases
            if c['status'] == 'ok' and c['kind'] == 'train' and c.get('warmup_losses')
            and beside_ours(c)}
    if 'ours' not in runs:
        return []
    steps = min(len(values) for values in runs.values())
    losses = {name: sum(values[:steps]) for name, values in runs.items()}
    ref = losses['ours']
    return [f'loss summed over the first {steps} optimizer steps (fp32 variants match ours up to '
            'float rounding): ' +
            ', '.join(f'{name} {value:.7g}' + ('' if name == 'ours' else
                                               f' ({(value - ref) / max(abs(ref), 1e-12):+.1e})')
                      for name, value in losses.items())]


def format_table(report: Dict) -> str:
    env, ratios = report['environment'], report['ratios']
    cases = report['cases']
    by = {c['name']: c for c in cases if c['status'] == 'ok'}
    header = ('case', 'batch x acc', 'amp', 'img/s', 's/opt step', 's/micro-batch',
              'CPU s/step', 'peak MiB', 'ratio')
    rows, notes = [], []
    for c in cases:
        if c['kind'] == 'profile':
            notes.append(f"{c['name']}: " + (profile_line(c['profile']) if c['status'] == 'ok'
                                              else c['status']))
            continue
        ref = None
        if c['variant']:
            ref = by.get(c.get('baseline') or 'ours')
        elif c['implementation'] == 'ours':
            ref = by.get(c['name'].replace('ours', 'stock', 1))
        ratio = None
        if c['status'] == 'ok' and ref:
            ratio = c['img_per_s'] / ref['img_per_s']
            ratio = f'{ratio:.2f}x vs {ref["name"]}'
        if c['status'] != 'ok':
            rows.append((c['name'], f"{c['batch_size']} x {c['accumulative_counts']}",
                         c['amp'] or '-', c['status'], '', '', '', '', ''))
            continue
        infer = c['kind'] == 'infer'
        rows.append((c['name'], f"{c['batch_size']} x {c['accumulative_counts']}"
                     + (' (infer)' if infer else ''), c['amp'] or '-',
                     _fmt(c['img_per_s'], '.3g'), '-' if infer else _fmt(c['s_per_step'], '.4f'),
                     _fmt(c['s_per_micro_batch'], '.4f'), _fmt(c['cpu_s_per_step'], '.4f'),
                     _fmt(c['peak_mem_mib'], '.0f'), ratio or '-'))
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    lines = [' | '.join(str(h).ljust(w) for h, w in zip(header, widths)),
             '-+-'.join('-' * w for w in widths)]
    lines += [' | '.join(str(v).ljust(w) for v, w in zip(r, widths)) for r in rows]
    lines += notes
    lines += [f"{c['name']}: {c['compiles_in_timed_steps']} torch.compile graph(s) made during "
              f"{c.get('compiling_steps', '?')} of the {len(c.get('step_times') or ()) or '?'} "
              'timed steps (in the mean); over the others: '
              f"{_fmt(c.get('steady_img_per_s'), '.3g')} img/s"
              for c in cases if c.get('compiles_in_timed_steps')]
    lines += [f"{c['name']}: {c['cudagraph_skips']} compiled graph(s) ran without CUDA graphs"
              + ('; inductor logged: ' + ' | '.join(c['cudagraph_skip_reasons'])
                 if c.get('cudagraph_skip_reasons') else '')
              for c in cases if c.get('cudagraph_skips') or c.get('cudagraph_skip_reasons')]
    lines += _warmup_losses(cases)
    mem = next((c['peak_mem_kind'] for c in cases if c['peak_mem_kind']), '')
    lines.append(f"config: {report['options']['config']} | device: {env['gpu'] or 'cpu'} | "
                 f"torch {env['torch']} | MSDA: {env['msda_path']} | peak memory: {mem}")
    if ratios.get('accumulation_overhead') is not None:
        lines.append('accumulation overhead (s/image of batch 1 x acc 2 / of batch 2 x acc 1): '
                     f"ours {_fmt(ratios['accumulation_overhead'], '.2f')}, stock "
                     f"{_fmt(ratios.get('stock_accumulation_overhead'), '.2f')} "
                     f"(target <= {TARGETS['accumulation_overhead']})")
    t = report['targets']
    lines.append(f"targets (one H100): train >= {TARGETS['train_img_per_s']} img/s, infer >= "
                 f"{TARGETS['infer_img_per_s']} img/s; this run: train "
                 f"{_fmt(t['best_train_img_per_s'], '.2f')} ({t['best_train_case']})"
                 + (f" ({_fmt(t['best_train_steady_img_per_s'], '.2f')} "
                    f"({t['best_train_steady_case']}) over the steps without compiling)"
                    if t.get('best_train_steady_case') and (
                        t['best_train_steady_case'] != t['best_train_case']
                        or t['best_train_steady_img_per_s'] != t['best_train_img_per_s'])
                    else '')
                 + ", infer "
                 f"{_fmt(t['infer_img_per_s'], '.2f')} (batch 1)"
                 + (f", {_fmt(t['best_infer_img_per_s'], '.2f')} ({t['best_infer_case']})"
                    if t.get('best_infer_case') not in (None, 'ours_infer') else '')
                 + f" on {t['measured_on']}"
                 + ('' if t['applies'] else ' (not an H100: targets not assessed)'))
    return '\n'.join(lines)


def write_json(report: Dict, path: str) -> None:
    """Write the report atomically: a run killed mid-write (a time limit) keeps the last one."""
    from tbx11k.utils.atomic_io import atomic_write_text
    os.makedirs(osp.dirname(osp.abspath(path)), exist_ok=True)
    atomic_write_text(json.dumps(report, indent=2, default=str), path)
