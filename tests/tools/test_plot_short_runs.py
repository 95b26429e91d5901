"""The plots of a short run read well: markers on every curve, a sensible y range for an all-zero
or constant panel with the legend beside the curves, the val metrics in percent as the
evaluation tables print them, and a guide line where each epoch starts."""
import json

import pytest

from tbx11k.apis.log_plots import (
    load_training_log,
    losses_figure,
    lr_figure,
    overview_figure,
    plot_logs,
    val_figure,
)

AP_KEYS = ('tbx11k/TB_AP50_all', 'tbx11k/TB_AP_all')


def write_run(work_dir, steps_per_epoch, epochs, interval, ap=0.0, auc=0.5, loss_mask=None):
    """A work dir with one session: train records every ``interval`` optimizer steps, one val
    record per epoch with the AP keys at ``ap`` (a fraction, as TBX11KMetric logs it)."""
    folder = work_dir / '20240101_000000' / 'vis_data'
    folder.mkdir(parents=True)
    lines = []
    for epoch in range(1, epochs + 1):
        for step in range((epoch - 1) * steps_per_epoch + 1, epoch * steps_per_epoch + 1):
            if step % interval == 0:
                record = dict(lr=1e-4, loss=20.0 - step / 10, loss_cls=2.0, loss_bbox=1.0,
                              loss_iou=0.5, grad_norm=3.0, epoch=epoch, iter=step, step=step)
                if loss_mask is not None:
                    record['loss_mask'] = loss_mask
                lines.append(record)
        lines.append({**{k: ap for k in AP_KEYS}, 'tbx11k/AUC': auc,
                      'tbx11k/cls_threshold': 3.5, 'step': epoch})
    (folder / 'scalars.json').write_text(''.join(json.dumps(r) + '\n' for r in lines))
    return load_training_log(str(work_dir))


def curves(fig):
    """The data lines of a figure (not grid or guide lines), by axes."""
    return [line for ax in fig.axes for line in ax.get_lines()
            if not line.get_label().startswith('_')]


def guides(ax):
    return [line.get_xdata()[0] for line in ax.get_lines() if line.get_gid() == 'epoch start']


@pytest.mark.parametrize('steps_per_epoch, epochs, interval', [(1, 2, 1), (60, 2, 1)])
def test_every_curve_has_markers(tmp_path, steps_per_epoch, epochs, interval):
    """A two-point run shows its two points; a long curve shows markers too (at most
    MAX_MARKERS of them)."""
    log = write_run(tmp_path, steps_per_epoch, epochs, interval)
    figures = [losses_figure(log), lr_figure(log), val_figure(log), overview_figure(log)]
    for fig in figures:
        lines = curves(fig)
        assert lines
        for line in lines:
            assert line.get_marker() == 'o', line.get_label()
            every = line.get_markevery() or 1
            assert len(line.get_xdata()[::every]) <= 40


def test_an_all_zero_ap_panel_reads_0_to_10_percent_with_the_legend_beside_it(tmp_path):
    log = write_run(tmp_path, 7, 2, 1, ap=0.0)
    fig = val_figure(log)
    ax = fig.axes[0]
    low, high = ax.get_ylim()
    assert low < 0 < 10 <= high <= 11  # was -0.04..0.04 around the zero line
    assert ax.get_ylabel() == '%' and ax.get_title().endswith('(%)')
    fig.canvas.draw()
    legend = ax.get_legend().get_window_extent()
    assert legend.x0 >= ax.get_window_extent().x1  # beside the axes, never over the curves


def test_val_metrics_are_drawn_in_percent_like_the_tables(tmp_path):
    log = write_run(tmp_path, 7, 3, 1, ap=0.523, auc=0.75)
    fig = val_figure(log)
    by_label = {line.get_label(): list(line.get_ydata()) for line in curves(fig)}
    assert by_label['TB_AP50_all'] == pytest.approx([52.3] * 3)
    assert by_label['AUC'] == pytest.approx([75.0] * 3)
    assert fig.axes[0].get_ylim()[1] >= 100  # 52 % is over half of a 0-50 axis: 0-100
    # a value that is no fraction (the score threshold) keeps its unit
    fig = val_figure(log, metrics=['tbx11k/cls_threshold', 'tbx11k/AUC'])
    by_label = {line.get_label(): list(line.get_ydata()) for line in curves(fig)}
    assert by_label == {'AUC': [0.75] * 3, 'cls_threshold': [3.5] * 3}
    assert fig.axes[0].get_ylabel() == ''


def test_a_constant_loss_panel_gets_a_fixed_pad(tmp_path):
    log = write_run(tmp_path, 7, 2, 1, loss_mask=0.0)
    fig = losses_figure(log)
    (ax,) = [a for a in fig.axes if a.get_title() == 'loss_mask']
    low, high = ax.get_ylim()
    assert low <= 0 and high >= 1  # matplotlib: -0.055..0.055 around the zero line
    (ax,) = [a for a in fig.axes if a.get_title().startswith('grad_norm')]  # constant 3.0
    assert ax.get_ylim() == pytest.approx((2.7, 3.3))


def test_epoch_starts_are_exact_when_the_logging_interval_hides_them(tmp_path):
    """24 optimizer steps per epoch logged every 10: the epochs start after steps 24 and 48 (not
    after the last logged steps 20 and 40)."""
    log = write_run(tmp_path, 24, 3, 10)
    assert log.steps_per_epoch() == 24
    assert log.epoch_starts() == [(2, 24.5), (3, 48.5)]
    for fig in (losses_figure(log), lr_figure(log), overview_figure(log)):
        for ax in fig.axes:
            if ax.get_visible() and ax.get_xlabel() == 'optimizer step':
                assert guides(ax) == [24.5, 48.5], ax.get_title()
                labels = [t.get_text() for t in ax.texts]
                assert labels == [' ep 2', ' ep 3']


def test_the_short_run_plots_are_written(tmp_path):
    write_run(tmp_path / 'work', 1, 2, 1)
    summary = plot_logs(str(tmp_path / 'work'))
    assert summary['val_epochs'] == [1, 2] and len(summary['files']) == 4
