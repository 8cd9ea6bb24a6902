"""Readable plots (jointobj/evaluation/report.py): one legend beside the panels and never over them, a
colour per model and a marker per decoder, x ticks at the data's ends."""

import pytest

pytest.importorskip("matplotlib")

from jointobj.evaluation import report  # noqa: E402

MODELS, DECODERS = ["base", "fine-tuned", "oracle"], ["l2r", "confidence", "speculative", "threshold"]


def rows(toysets=("latin_square_3", "agreement")):
    out = []
    for t, toyset in enumerate(toysets):
        top = 9.0 - 4 * t  # the largest tokens per step, not a power of two
        for m, model in enumerate(MODELS):
            for d, decoder in enumerate(DECODERS):
                for k in (1.0, 1.8, top):
                    out.append({"toyset": toyset, "model": model, "decoder": decoder, "tokens_per_step": k,
                                "validity": 0.2 + 0.1 * m + 0.05 * d, "rows_per_sample": 9 / k + d,
                                "gen_length": 9})
    return out


@pytest.fixture
def drawn(monkeypatch):
    """The matplotlib figure each plot function would write."""
    figures = []
    monkeypatch.setattr(report, "save_figure", lambda figure, path, dpi: figures.append(figure) or path)
    return figures


def _boxes(figure):
    renderer = figure.canvas.get_renderer()
    axes = [ax for ax in figure.axes if ax.get_visible()]
    return renderer, axes


@pytest.mark.parametrize("plot", ["frontier", "validity"])
def test_one_legend_beside_the_panels_never_over_them(plot, drawn, tmp_path):
    # Fails with a legend per panel drawn inside the axes (it covered the lower left and the oracle's points).
    data = rows()
    if plot == "frontier":
        report.plot_frontier(data, tmp_path / "f.png")
    else:
        report.plot_validity([r for r in data if r["model"] == "fine-tuned"], tmp_path / "v.png",
                             oracle_rows=[r for r in data if r["model"] == "oracle"],
                             baseline_rows=[r for r in data if r["model"] == "base"])
    figure = drawn[0]
    renderer, axes = _boxes(figure)
    assert all(ax.get_legend() is None for ax in axes) and len(figure.legends) == 1
    legend = figure.legends[0].get_window_extent(renderer)
    assert not any(legend.overlaps(ax.get_window_extent(renderer)) for ax in axes)
    assert legend.x1 <= figure.bbox.x1 + 1  # inside the picture
    labels = [text.get_text() for text in figure.legends[0].get_texts()]
    assert labels == ["model", *MODELS, "decoder", *DECODERS] or labels == [
        "model", "fine-tuned", "base", "oracle", "decoder", *DECODERS]


def test_a_colour_per_model_and_a_marker_per_decoder(drawn, tmp_path):
    report.plot_frontier(rows(), tmp_path / "f.png")
    lines = [line for ax in drawn[0].axes for line in ax.get_lines() if len(line.get_xdata()) == 3]
    assert len(lines) == 2 * 2 * len(MODELS) * len(DECODERS)  # two sets, two panels each
    colours = {(line.get_color(), line.get_marker()) for line in lines}
    assert len({c for c, _ in colours}) == len(MODELS) and len({m for _, m in colours}) == len(DECODERS)
    assert len(colours) == len(MODELS) * len(DECODERS)


def test_the_draft_head_scripts_fifteen_decoders_get_fifteen_markers():
    # Failed with 12 markers: "spec head topk k=1" drew l2r's circle (eval/draft_head.py's tree rows).
    decoders = [f"decoder {i}" for i in range(15)]
    _, per_decoder = report._encodings(["oracle"], decoders)
    assert len({style["marker"] for style in per_decoder.values()}) == len(decoders)


def test_x_ticks_reach_the_largest_and_smallest_tokens_per_step(drawn, tmp_path):
    # Fails with matplotlib's log-2 locator: ticks at 1, 2, 4, 8, none at 9 (nor at 5).
    report.plot_frontier(rows(), tmp_path / "f.png")
    axes = [ax for ax in drawn[0].axes if ax.get_visible()]
    ticks = [sorted(ax.get_xticks()) for ax in axes]
    assert ticks[0][0] == 1.0 and ticks[0][-1] == 9.0 and ticks[2][-1] == 5.0
    low, high = axes[0].get_xlim()
    assert low < 1.0 and high > 9.0  # the end points are not cut in half by the frame
