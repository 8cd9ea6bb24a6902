"""Tables, JSON and PNG plots shared by the eval scripts (and, later, the recipes).

    print(format_table(rows, ["toyset", "decoder", "tokens_per_step", "validity"]))
    plot_validity(rows, "validity.png", oracle_rows=oracle)
    plot_frontier(rows, "frontier.png")   # validity and rows per token vs tokens per step, every decoder

matplotlib is optional (the `eval` / `dev` extras); it is imported only when a plot is
drawn, through its object API (no pyplot state, no backend switch in the caller's process).
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

__all__ = ["format_headline", "format_table", "plot_frontier", "plot_position_profile", "plot_validity", "write_json"]


def _cell(value: Any, precision: int) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return "nan" if math.isnan(value) else f"{value:.{precision}f}"
    if isinstance(value, (list, tuple)):
        return " ".join(_cell(v, precision) for v in value)
    return str(value)


def format_table(rows: Sequence[Mapping[str, Any]], columns: Sequence[str], precision: int = 3) -> str:
    """A fixed-width text table of `columns` (missing keys and None print as '-'); numbers right-aligned."""
    cells = [[_cell(row.get(c), precision) for c in columns] for row in rows]
    widths = [max([len(c)] + [len(r[i]) for r in cells]) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), (int, float)) or row.get(c) is None for row in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if n else v.ljust(w) for v, w, n in zip(values, widths, numeric)).rstrip()

    rule = "  ".join("-" * w for w in widths)
    return "\n".join([line(columns), rule] + [line(r) for r in cells])


def format_headline(heads: Sequence[Mapping[str, Any]]) -> str:
    """One line per (decoder, toy set): highest tokens/step with validity >= level, and its cost."""
    lines = []
    for h in heads:
        where = f"{h['decoder']} on {h['toyset']}"
        if h["tokens_per_step"] is None:
            lines.append(f"{where}: validity never reaches {h['level']:.0%} (not even at the fewest tokens per step)")
        else:
            lines.append(f"{where}: {h['tokens_per_step']:.2f} tokens/step at validity >= {h['level']:.0%} "
                         f"({h['validity']:.3f}; {h['steps_per_sample']:.2f} steps, "
                         f"{h['rows_per_sample']:.2f} rows per sample)")
    return "\n".join(lines)


def write_json(path: str | Path, payload: Any) -> Path:
    """Write `payload` as indented JSON (parent folders created); NaN and +-inf become null
    (json.dumps would write NaN / Infinity, which strict JSON readers refuse)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)

    def clean(value: Any) -> Any:
        if isinstance(value, float) and not math.isfinite(value):
            return None
        if isinstance(value, Mapping):
            return {k: clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        return value

    path.write_text(json.dumps(clean(payload), indent=2) + "\n")
    return path


def save_figure(figure: Any, path: str | Path, dpi: int) -> Path:
    """Write a figure (parent folders created). A PNG gets a 64-colour palette: a plot holds a few
    colours, and the file is about a quarter of full colour's (the whole-suite frontier: 0.56 -> 0.15 MB)."""
    from PIL import Image  # matplotlib's own dependency

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix.lower() != ".png":
        figure.savefig(path, dpi=dpi)
        return path
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=dpi)
    buffer.seek(0)
    Image.open(buffer).convert("RGB").quantize(colors=64).save(path, optimize=True)
    return path


_MARGINS = {"left": 0.75, "right": 0.15, "top": 0.35, "bottom": 0.55, "between": 1.1}  # inches around each panel
# one per decoder; eval/draft_head.py draws 15 (the speculative decoder's drafts, trees and top-k beside l2r)
_MARKERS = ["o", "s", "^", "v", "D", "P", "X", "*", "<", ">", "h", "p", "+", "x", "1", "2", "3", "4", "|", "_"]
_LINE_STYLES = ["-", "--", "-.", ":"]  # with the colour, one per model


def _figure(panels: int, width: float = 4.2, height: float = 3.4, columns: int = 3, legend_width: float = 0.0):
    """An Agg figure with `panels` axes on a grid `columns` wide (unused cells hidden) and a strip
    `legend_width` inches wide on the right for the one shared legend. Fixed margins in inches (room
    for a tick label, an axis label and a title) instead of a layout engine, whose extra measuring
    pass costs more than the drawing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'jointobj[eval]' (or matplotlib), "
                          "or leave out --plot") from error
    columns = min(columns, panels)
    rows = -(-panels // columns)
    figure = Figure(figsize=(width * columns + legend_width, height * rows))
    FigureCanvasAgg(figure)
    m, across, down = _MARGINS, width * columns + legend_width, height * rows
    panel_width = (across - legend_width - m["left"] - m["right"] - m["between"] * (columns - 1)) / columns
    panel_height = (down - m["top"] - m["bottom"] - m["between"] * (rows - 1)) / rows
    spacing = {"left": m["left"] / across, "right": 1 - (m["right"] + legend_width) / across,
               "bottom": m["bottom"] / down, "top": 1 - m["top"] / down,
               "wspace": m["between"] / panel_width, "hspace": m["between"] / panel_height}
    axes = figure.subplots(rows, columns, squeeze=False, gridspec_kw=spacing).flatten()
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, axes[:panels]


def _legend_width(labels: Sequence[str]) -> float:
    """Inches the shared legend needs: the handle and the longest label at x-small size."""
    return min(4.5, 0.75 + 0.065 * max((len(label) for label in labels), default=0))


def _encodings(models: Sequence[str], decoders: Sequence[str]) -> tuple[dict, dict]:
    """A colour and line style per model, a marker per decoder (matplotlib keyword arguments). Each
    later model is drawn thinner with smaller markers, so a series that coincides with an earlier
    one (a fine-tuned model equal to its base somewhere) shows inside it instead of hiding it."""
    per_model = {m: {"color": f"C{i % 10}", "linestyle": _LINE_STYLES[i % len(_LINE_STYLES)],
                     "linewidth": max(0.8, 2.6 - 0.7 * i), "markersize": max(2.5, 7.0 - 1.5 * i)}
                 for i, m in enumerate(models)}
    per_decoder = {d: {"marker": _MARKERS[i % len(_MARKERS)]} for i, d in enumerate(decoders)}
    return per_model, per_decoder


def _shared_legend(figure: Any, models: Sequence[str], decoders: Sequence[str], per_model: dict,
                   per_decoder: dict, extra: Sequence[tuple[Any, str]] = ()) -> Any:
    """One legend for the whole figure, in the strip right of the panels (never over the data): a
    line per model (its colour and style), a marker per decoder, then `extra` (handle, label)."""
    from matplotlib.lines import Line2D

    heading = lambda text: (Line2D([], [], linestyle="none"), text)  # noqa: E731
    entries = [heading("model")] if models else []
    headings = {0, len(models) + 1} if models else {0}
    entries += [(Line2D([], [], **per_model[m]), m) for m in models]
    entries += [heading("decoder")] + [(Line2D([], [], color="black", linestyle="none", **per_decoder[d]), d)
                                       for d in decoders]
    entries += list(extra)
    left = 1 - (_legend_width([label for _, label in entries]) + 0.05) / figure.get_figwidth()
    legend = figure.legend([h for h, _ in entries], [label for _, label in entries], loc="upper left",
                           bbox_to_anchor=(left, 1 - _MARGINS["top"] / figure.get_figheight()),
                           fontsize="x-small", frameon=False, handlelength=2.5)
    for at in headings:
        legend.get_texts()[at].set_fontweight("bold")
    return legend


def _ticks_at_the_ends(ax: Any, values: Sequence[float], axis: str = "x") -> None:
    """A log-2 axis whose ticks are the data's smallest and largest values and the powers of two
    between them (none so close to an end that their labels collide), with room beyond the ends."""
    from matplotlib.ticker import NullLocator

    values = [v for v in values if v is not None and v > 0 and math.isfinite(v)]
    if not values:
        return
    low, high = min(values), max(values)
    powers = [2.0 ** k for k in range(math.ceil(math.log2(low)), math.floor(math.log2(high)) + 1)]
    ticks = sorted({low, high, *(p for p in powers if low * 1.2 < p < high / 1.2)})
    pad = 1.12 if high > low else 1.5
    which = ax.xaxis if axis == "x" else ax.yaxis
    (ax.set_xscale if axis == "x" else ax.set_yscale)("log", base=2)
    (ax.set_xlim if axis == "x" else ax.set_ylim)(low / pad, high * pad)
    which.set_ticks(ticks)
    which.set_ticklabels([f"{t:.3g}" for t in ticks])
    which.set_minor_locator(NullLocator())


def _series(rows: Sequence[Mapping[str, Any]], toyset: str) -> dict[tuple[str, str], list[Mapping[str, Any]]]:
    """(model, decoder) -> the set's rows, sorted by measured tokens per step (stable: sweep order on ties)."""
    series: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["toyset"] == toyset:
            series.setdefault(_series_key(row), []).append(row)
    return {key: sorted(group, key=lambda r: r["tokens_per_step"]) for key, group in series.items()}


def plot_validity(rows: Sequence[Mapping[str, Any]], path: str | Path,
                  oracle_rows: Sequence[Mapping[str, Any]] | None = None,
                  baseline_rows: Sequence[Mapping[str, Any]] | None = None, baseline_label: str = "base") -> Path:
    """Validity vs measured tokens per step: a panel per toy set; a colour (and line style) per
    model -- the rows' own `model` (one or several), a baseline's (e.g. the model before
    fine-tuning) and the oracle's -- and a marker per decoder; one legend beside the panels.
    Writes a PNG."""
    everything = ([{**r, "model": str(r.get("model") or "model")} for r in rows]
                  + [{**r, "model": baseline_label} for r in baseline_rows or []]
                  + [{**r, "model": "oracle"} for r in oracle_rows or []])
    toysets = list(dict.fromkeys(r["toyset"] for r in everything))
    decoders = list(dict.fromkeys(r["decoder"] for r in everything))
    models = list(dict.fromkeys(r["model"] for r in everything))
    per_model, per_decoder = _encodings(models, decoders)
    figure, axes = _figure(max(1, len(toysets)), legend_width=_legend_width(models + decoders))
    for ax, toyset in zip(axes, toysets):
        for (model, decoder), group in _series(everything, toyset).items():
            ax.plot([r["tokens_per_step"] for r in group], [r["validity"] for r in group],
                    **per_model[model], **per_decoder[decoder])
        ax.axhline(0.99, color="grey", linewidth=0.8, linestyle=":")
        _ticks_at_the_ends(ax, [r["tokens_per_step"] for r in everything if r["toyset"] == toyset])
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(toyset)
        ax.set_xlabel("tokens per step (measured)")
        ax.set_ylabel("joint validity")
    _shared_legend(figure, models, decoders, per_model, per_decoder)
    return save_figure(figure, path, dpi=110)


def _series_key(row: Mapping[str, Any]) -> tuple[str, str]:
    return (str(row.get("model") or ""), row["decoder"])


def plot_frontier(rows: Sequence[Mapping[str, Any]], path: str | Path, level: float = 0.99) -> Path:
    """The frontier: per toy set, validity (left) and forward rows per generated token (right,
    log scale) against measured tokens per step (log scale). A colour and line style per model
    (rows' `model`, if any: e.g. base, fine-tuned, oracle), a marker per decoder (rescored
    decoders included), one legend beside the panels; the points of one (model, decoder) are
    every K and knob setting swept, joined in order of tokens per step. Writes a PNG."""
    toysets = list(dict.fromkeys(r["toyset"] for r in rows))
    decoders = list(dict.fromkeys(r["decoder"] for r in rows))
    models = [m for m in dict.fromkeys(str(r.get("model") or "") for r in rows)]
    per_model, per_decoder = _encodings(models, decoders)
    shown_models = [m for m in models if m]  # rows without a model: one unnamed model, no legend heading
    figure, axes = _figure(max(1, 2 * len(toysets)), width=4.6, columns=2,
                           legend_width=_legend_width(shown_models + decoders))
    for t, toyset in enumerate(toysets):
        left, right = axes[2 * t], axes[2 * t + 1]
        for (model, decoder), group in _series(rows, toyset).items():
            x = [r["tokens_per_step"] for r in group]
            style = dict(**per_model[model], **per_decoder[decoder])
            left.plot(x, [r["validity"] for r in group], **style)
            right.plot(x, [r["rows_per_sample"] / r["gen_length"] for r in group], **style)
        left.axhline(level, color="grey", linewidth=0.8, linestyle=":")
        left.set_ylim(-0.02, 1.02)
        left.set_ylabel("joint validity")
        set_rows = [r for r in rows if r["toyset"] == toyset]
        _ticks_at_the_ends(right, [r["rows_per_sample"] / r["gen_length"] for r in set_rows], axis="y")
        right.set_ylabel("forward rows per generated token")
        for ax, what in ((left, "validity"), (right, "compute")):
            _ticks_at_the_ends(ax, [r["tokens_per_step"] for r in set_rows])
            ax.set_xlabel("tokens per sequential step (measured)")
            ax.set_title(f"{toyset}: {what}")
    _shared_legend(figure, shown_models, decoders, per_model, per_decoder)
    return save_figure(figure, path, dpi=100)


def plot_position_profile(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Entropy and KL to the unigram vs distance from the context (the frequency-collapse probe)."""
    figure, (left, right) = _figure(2, legend_width=_legend_width(["prediction"]))
    distance = [r["distance"] for r in rows]
    left.plot(distance, [r["entropy"] for r in rows], marker="o", label="prediction")
    left.axhline(rows[0]["unigram_entropy"], color="grey", linestyle="--", label="unigram")
    left.set_ylabel("entropy (nats)")
    left_edge = 1 - (_legend_width(["prediction"]) + 0.05) / figure.get_figwidth()
    figure.legend(loc="upper left", bbox_to_anchor=(left_edge, 1 - _MARGINS["top"] / figure.get_figheight()),
                  fontsize="x-small", frameon=False)  # beside the panels, not over a line
    right.plot(distance, [r["kl_to_unigram"] for r in rows], marker="o", color="C1")
    right.set_ylabel("KL(prediction || unigram) (nats)")
    for ax in (left, right):
        ax.set_xlabel("distance from the context (positions)")
        ax.set_title(title)
    return save_figure(figure, path, dpi=110)
