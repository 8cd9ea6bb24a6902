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


def _figure(panels: int, width: float = 4.2, height: float = 3.4, columns: int = 3):
    """An Agg figure with `panels` axes on a grid `columns` wide (unused cells hidden). Fixed
    margins in inches (room for a tick label, an axis label and a title) instead of a layout
    engine, whose extra measuring pass costs more than the drawing."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:
        raise ImportError("plots need matplotlib: pip install 'jointobj[eval]' (or matplotlib), "
                          "or leave out --plot") from error
    columns = min(columns, panels)
    rows = -(-panels // columns)
    figure = Figure(figsize=(width * columns, height * rows))
    FigureCanvasAgg(figure)
    m, across, down = _MARGINS, width * columns, height * rows
    panel_width = (across - m["left"] - m["right"] - m["between"] * (columns - 1)) / columns
    panel_height = (down - m["top"] - m["bottom"] - m["between"] * (rows - 1)) / rows
    spacing = {"left": m["left"] / across, "right": 1 - m["right"] / across, "bottom": m["bottom"] / down,
               "top": 1 - m["top"] / down, "wspace": m["between"] / panel_width, "hspace": m["between"] / panel_height}
    axes = figure.subplots(rows, columns, squeeze=False, gridspec_kw=spacing).flatten()
    for unused in axes[panels:]:
        unused.set_visible(False)
    return figure, axes[:panels]


def plot_validity(rows: Sequence[Mapping[str, Any]], path: str | Path,
                  oracle_rows: Sequence[Mapping[str, Any]] | None = None,
                  baseline_rows: Sequence[Mapping[str, Any]] | None = None, baseline_label: str = "base") -> Path:
    """Validity vs measured tokens per step: a panel per toy set, a line per decoder; the
    oracle's rows (if given) dashed and a baseline's (e.g. the model before fine-tuning)
    dash-dotted, in the decoder's colour. Writes a PNG."""
    oracle_rows, baseline_rows = oracle_rows or [], baseline_rows or []
    everything = list(rows) + list(oracle_rows) + list(baseline_rows)
    toysets = list(dict.fromkeys(r["toyset"] for r in everything))
    decoders = list(dict.fromkeys(r["decoder"] for r in everything))
    figure, axes = _figure(max(1, len(toysets)))
    colours = {d: f"C{i % 10}" for i, d in enumerate(decoders)}
    series = ((rows, "-", ""), (baseline_rows, "-.", f" ({baseline_label})"), (oracle_rows, "--", " (oracle)"))
    for ax, toyset in zip(axes, toysets):
        for source, style, suffix in series:
            for decoder in decoders:
                points = sorted(((r["tokens_per_step"], r["validity"]) for r in source  # stable: K order on ties
                                 if r["toyset"] == toyset and r["decoder"] == decoder), key=lambda p: p[0])
                if points:
                    x, y = zip(*points)
                    ax.plot(x, y, style, marker="o", color=colours[decoder], label=decoder + suffix)
        ax.axhline(0.99, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xscale("log", base=2)
        ax.xaxis.set_major_formatter("{x:g}")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(toyset)
        ax.set_xlabel("tokens per step (measured)")
        ax.set_ylabel("joint validity")
        ax.legend(fontsize="small")
    return save_figure(figure, path, dpi=110)


def _series_key(row: Mapping[str, Any]) -> tuple[str, str]:
    return (str(row.get("model") or ""), row["decoder"])


def plot_frontier(rows: Sequence[Mapping[str, Any]], path: str | Path, level: float = 0.99) -> Path:
    """The frontier: per toy set, validity (left) and forward rows per generated token (right,
    log scale) against measured tokens per step (log scale). A colour per decoder (rescored
    decoders included), a line style per model (rows' `model`, if any: e.g. base, fine-tuned,
    oracle); the points of one (model, decoder) are every K and knob setting swept, joined in
    order of tokens per step. Writes a PNG."""
    toysets = list(dict.fromkeys(r["toyset"] for r in rows))
    decoders = list(dict.fromkeys(r["decoder"] for r in rows))
    models = list(dict.fromkeys(str(r.get("model") or "") for r in rows))
    colours = {d: f"C{i % 10}" for i, d in enumerate(decoders)}
    styles = {m: s for m, s in zip(models, ["-", "--", "-.", ":"] * (1 + len(models) // 4))}
    markers = {m: s for m, s in zip(models, ["o", "s", "^", "v", "D"] * (1 + len(models) // 5))}
    figure, axes = _figure(max(1, 2 * len(toysets)), width=4.6, columns=2)
    for t, toyset in enumerate(toysets):
        left, right = axes[2 * t], axes[2 * t + 1]
        series: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
        for row in rows:
            if row["toyset"] == toyset:
                series.setdefault(_series_key(row), []).append(row)
        for (model, decoder), group in series.items():
            group = sorted(group, key=lambda r: r["tokens_per_step"])  # stable: sweep order on ties
            x = [r["tokens_per_step"] for r in group]
            label = decoder + (f" ({model})" if len(models) > 1 else "")
            style = dict(linestyle=styles[model], marker=markers[model], color=colours[decoder], markersize=4)
            left.plot(x, [r["validity"] for r in group], label=label, **style)
            right.plot(x, [r["rows_per_sample"] / r["gen_length"] for r in group], label=label, **style)
        left.axhline(level, color="grey", linewidth=0.8, linestyle=":")
        left.set_ylim(-0.02, 1.02)
        left.set_ylabel("joint validity")
        right.set_yscale("log")
        right.set_ylabel("forward rows per generated token")
        for ax, what in ((left, "validity"), (right, "compute")):
            ax.set_xscale("log", base=2)
            ax.xaxis.set_major_formatter("{x:g}")
            ax.set_xlabel("tokens per sequential step (measured)")
            ax.set_title(f"{toyset}: {what}")
        left.legend(fontsize="x-small", ncol=1 + len(series) // 12)
    return save_figure(figure, path, dpi=100)


def plot_position_profile(rows: Sequence[Mapping[str, Any]], path: str | Path, title: str = "") -> Path:
    """Entropy and KL to the unigram vs distance from the context (the frequency-collapse probe)."""
    figure, (left, right) = _figure(2)
    distance = [r["distance"] for r in rows]
    left.plot(distance, [r["entropy"] for r in rows], marker="o", label="prediction")
    left.axhline(rows[0]["unigram_entropy"], color="grey", linestyle="--", label="unigram")
    left.set_ylabel("entropy (nats)")
    left.legend(fontsize="small")
    right.plot(distance, [r["kl_to_unigram"] for r in rows], marker="o", color="C1")
    right.set_ylabel("KL(prediction || unigram) (nats)")
    for ax in (left, right):
        ax.set_xlabel("distance from the context (positions)")
        ax.set_title(title)
    return save_figure(figure, path, dpi=110)
