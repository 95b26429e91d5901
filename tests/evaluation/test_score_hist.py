"""score_hist.png bins the image scores over their own range: a short run's scores, all within
a few hundredths, spread over several bars instead of one bar of a fixed 0-1 grid."""
import numpy as np
import pytest

from tbx11k.evaluation.report import (
    MAX_SCORE_BINS,
    MIN_SCORE_BINS,
    plot_score_hist,
    score_bin_edges,
    score_hist_figure,
)


def bars(fig):
    """Heights of the histogram bars of the figure's axes."""
    return [p.get_height() for p in fig.axes[0].patches]


def test_scores_in_a_narrow_range_fill_several_bars(tmp_path):
    rng = np.random.default_rng(0)
    scores = rng.uniform(0.30, 0.31, 60)
    labels = np.arange(60) % 2 == 0
    fig = score_hist_figure(scores, labels, thr=0.305)
    assert sum(h > 0 for h in bars(fig)) >= 2 * 5  # each class over >= 5 bars (was 1 bar)
    low, high = fig.axes[0].get_xlim()
    assert 0.299 <= low <= scores.min() and scores.max() <= high <= 0.311  # not 0..1
    plot_score_hist(str(tmp_path / 'score_hist.png'), scores, labels, 0.305)
    assert (tmp_path / 'score_hist.png').stat().st_size > 5000


def test_bin_edges_stay_within_bounds_and_cover_the_threshold():
    many = np.random.default_rng(1).normal(0.5, 0.2, 100000)
    edges = score_bin_edges(many)
    assert len(edges) - 1 == MAX_SCORE_BINS and edges[0] == many.min()
    assert len(score_bin_edges(np.array([0.2, 0.4]))) - 1 == MIN_SCORE_BINS
    edges = score_bin_edges(np.array([0.2, 0.4]), thr=0.9)
    assert edges[0] == pytest.approx(0.2) and edges[-1] == pytest.approx(0.9)
    # one value (every image the same score): a fixed pad around it
    edges = score_bin_edges(np.full(5, 0.25))
    assert edges[0] < 0.25 < edges[-1] and np.all(np.diff(edges) > 0)
    # no finite score at all: a plain 0-1 axis
    assert score_bin_edges(np.array([np.nan]))[[0, -1]].tolist() == [0.0, 1.0]
