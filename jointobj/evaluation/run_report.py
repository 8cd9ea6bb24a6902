"""The report of a recipe run: base, fine-tuned and the exact oracle side by side on the toy sets.

    rows = report_run("runs/base", "runs/logsum", ["latin_square_3"], decoders=["l2r"], tokens_per_step=[1, 2],
                      samples=400, seed=0, output_dir="runs/logsum")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from jointobj.decoding.budget import ALL
from jointobj.decoding.decoder_law import DecoderOrder, parse_decoder_orders
from jointobj.evaluation.exact_validity import explain_fall
from jointobj.evaluation.frontier import (
    REPORT_GRID,
    TARGET,
    TARGET_COLUMNS,
    SweepPoint,
    registered_grid,
    setting_label,
    sweep_points,
    target_status,
)
from jointobj.evaluation.metrics import validity_change_z, validity_fell
from jointobj.evaluation.report import format_table, plot_frontier, write_json
from jointobj.evaluation.sweep import evaluate, headline
from jointobj.model.denoiser import Denoiser
from jointobj.toysets.builtin import load_toyset
from jointobj.toysets.oracle import OracleDenoiser

__all__ = ["BASELINE_LABEL", "mark_harm", "report_run", "trained_for_points"]

BASELINE_LABEL = "TokenCE"  # TokenCE continued (the recipe's --token_ce_step_ratio), beside the fine-tuned model


def report_run(base_dir: str | Path, tuned_dir: str | Path, toysets: Sequence[str], *, decoders: Sequence[str],
               tokens_per_step: Sequence[int | str | None], samples: int, seed: int,
               output_dir: str | Path, train_for: str | None = None,
               load: Mapping[str, Any] | None = None,
               trained: Mapping[str, Mapping[str, Any]] | None = None) -> list[dict]:
    """The trap and its cure, printed and written beside the adapter: base, fine-tuned and the exact
    oracle (the best any model could do with each decoder) on the toy sets, under the plain
    decoders (report_decoders x report_tokens_per_step) and the frontier's grid (REPORT_GRID in
    jointobj/evaluation/frontier.py: the speculative decoder, the confidence threshold). Prints one line per
    (set, decoder setting) with each model's tokens per step, validity and TV, the headline
    (highest tokens per step with validity >= 0.99) and, for sets of >= 8 answer tokens, the
    target status; writes report.json (every row) and report.png (the frontier).

    `train_for` (decoder specs, jointobj/decoding/decoder_law.py): those settings come first, with each
    model's decoder NLL of the set's answers. Every line shows coverage beside what exact sampling
    covers, and `harm` = FELL where validity fell from base to fine-tuned by more than 2 standard errors.
    `load`: Denoiser.from_pretrained's options for both models (trust_remote_code, mask_token_id, compat), as
    the run loaded its base.

    `trained`: each trained model's {"steps", "seconds"} (the recipe's record), printed; a `TokenCE` entry
    with a "dir" (inside `tuned_dir`) adds that model, TokenCE continued from the same base, as a column
    between base and fine-tuned, and the settings trained for get a table of their own: every model's
    validity with its 95% interval, coverage beside exact sampling's, TV beside its floor, tokens per step,
    and the fine-tuned model's change over TokenCE and over the oracle in standard errors."""
    options = dict(load or {})
    models = {"base": Denoiser.from_pretrained(base_dir, **options).eval()}  # the saved artifacts, as reloaded
    baseline = (trained or {}).get(BASELINE_LABEL)
    if baseline and baseline.get("dir"):
        models[BASELINE_LABEL] = Denoiser.from_pretrained(Path(tuned_dir) / baseline["dir"], **options).eval()
    models["fine-tuned"] = Denoiser.from_pretrained(tuned_dir, **options).eval()
    models["oracle"] = OracleDenoiser(*toysets)
    trained_for = trained_for_points(train_for)
    points = sweep_points(decoders, tokens_per_step, grid=registered_grid(REPORT_GRID))
    rows = []
    for label, denoiser in models.items():
        for group, nll in ((trained_for, True), (points, False)):  # the decoder's NLL where it was trained for
            if group:
                rows += [{"model": label, "trained_for": nll, **row}
                         for row in evaluate(denoiser, toysets, points=group, samples=samples, seed=seed,
                                             decoder_nll=nll)]
    table: dict[tuple[str, str, str], dict[str, Any]] = {}
    for row in rows:
        line = table.setdefault((row["toyset"], row["decoder"], setting_label(row)), {
            "toyset": row["toyset"], "decoder": row["decoder"], "setting": setting_label(row),
            "tv floor": row["tv_floor"], "cov exact": row["coverage_exact"]})
        line.update({f"{row['model']} tok/step": row["tokens_per_step"], f"{row['model']} valid": row["validity"],
                     f"{row['model']} cov": row["coverage"], f"{row['model']} tv": row["tv"],
                     f"{row['model']} nll": row["decoder_nll"], f"{row['model']} n": row["samples"]})
        line["law"] = decoder_law_of(row)  # the decoder as a DecoderOrder where its law is exact, else None
        if row["model"] == "fine-tuned":
            line["rows/token"] = row["rows_per_token"]
            line["fine-tuned valid 95%"] = f"{row['validity_low']:.3f}-{row['validity_high']:.3f}"  # Wilson
    if trained:
        print("\ntrained: " + "; ".join(f"{label} {run['steps']} steps in {run['seconds']:.1f} s"
                                         for label, run in trained.items()))
    if trained_for:
        print(f"\nat the settings trained for ({train_for}): validity with its 95% interval, coverage beside exact "
              "sampling's, TV beside its floor; the fine-tuned model's change in standard errors over TokenCE "
              "continued and over the oracle (the best a per-token model can do with that decoder and budget)")
        print(format_table(trained_for_lines(rows), TRAINED_FOR_COLUMNS))
    harmed = mark_harm(list(table.values()))
    per_model = [f"{label} {what}" for label in models for what in ("tok/step", "valid", "cov", "tv", "nll")]
    per_model.insert(per_model.index("fine-tuned valid") + 1, "fine-tuned valid 95%")
    first = f"; trained for {train_for}, its settings first" if train_for else ""
    print(f"\nvalidity, coverage (beside what exact sampling covers), TV and tokens per step ({samples} samples per "
          f"cell; rows/token of the fine-tuned model: forward rows per generated token{first}; nll: the decoder's "
          "NLL of the set's answers, nats, on the settings trained for; harm: validity fell from base to fine-tuned "
          "by more than 2 standard errors)")
    print(format_table(list(table.values()), ["toyset", "decoder", "setting", *per_model, "cov exact", "tv floor",
                                              "rows/token", "harm"]))
    print(f"\ndo no harm: {len(harmed)} setting(s) fell by more than 2 standard errors"
          + "".join(f"\n  {h['toyset']} {h['decoder']} {h['setting']}: {h['base valid']:.3f} -> "
                    f"{h['fine-tuned valid']:.3f}" + fall_note(h, models) for h in harmed))
    best: dict[tuple[str, str], dict[str, Any]] = {}
    for label in models:
        for head in headline([r for r in rows if r["model"] == label]):
            key = (head["toyset"], head["decoder"])
            cell = best.setdefault(key, {"toyset": head["toyset"], "decoder": head["decoder"]})
            cell[label] = head["tokens_per_step"]
            if label == "fine-tuned":
                cell["fine-tuned setting"] = head["knobs"] or None
    print("\nhighest tokens per step with validity >= 0.99 (- : not even at the fewest)")
    print(format_table(list(best.values()), ["toyset", "decoder", *models, "fine-tuned setting"]))
    status = target_status([r for r in rows if r["model"] != "oracle"])
    if status:
        print(f"\n{TARGET.describe()}")
        print(format_table(status, TARGET_COLUMNS))
    out = Path(output_dir)
    write_json(out / "report.json", rows)
    plot_frontier(rows, out / "report.png")
    print(f"\nreport: {out / 'report.json'}, plot: {out / 'report.png'}, adapter: {out}")
    return rows


TRAINED_FOR_COLUMNS = ["toyset", "setting", "model", "tok/step", "valid", "valid 95%", "cov", "cov exact", "tv",
                       "tv floor", "nll", f"vs {BASELINE_LABEL}", "vs oracle"]


def trained_for_lines(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One line per (set, setting trained for, model), sets in the report's order, models as evaluated; on the
    fine-tuned line, its validity's change over TokenCE continued and over the oracle in standard errors
    (`validity_change_z`, e.g. "+3.1 se")."""
    lines: list[dict[str, Any]] = []
    cells: dict[tuple[str, str], dict[str, Mapping[str, Any]]] = {}
    for row in rows:
        if row.get("trained_for"):
            cells.setdefault((row["toyset"], setting_label(row)), {})[row["model"]] = row
    for (toyset, setting), by_model in cells.items():
        for model, row in by_model.items():
            line = {"toyset": toyset, "setting": f"{row['decoder']} {setting}", "model": model,
                    "tok/step": row["tokens_per_step"], "valid": row["validity"],
                    "valid 95%": f"{row['validity_low']:.3f}-{row['validity_high']:.3f}",
                    "cov": row["coverage"], "cov exact": row["coverage_exact"], "tv": row["tv"],
                    "tv floor": row["tv_floor"], "nll": row["decoder_nll"]}
            if model == "fine-tuned":
                for other, column in ((BASELINE_LABEL, f"vs {BASELINE_LABEL}"), ("oracle", "vs oracle")):
                    if other in by_model:
                        z = validity_change_z(by_model[other]["validity"], by_model[other]["samples"],
                                              row["validity"], row["samples"])
                        line[column] = f"{z:+.1f} se"
            lines.append(line)
    return lines


def trained_for_points(train_for: str | None) -> list[SweepPoint]:
    """The report's first settings: each decoder trained for, at its budget (a `train_for` spec)."""
    points = []
    for order in parse_decoder_orders(train_for or ""):
        options = order.decoder_options
        points.append(SweepPoint(order.policy_name, order.tokens_per_step, tuple(sorted(options.items())),
                                 tuple(options)))
    return points


def decoder_law_of(row: Mapping[str, Any]) -> DecoderOrder | None:
    """A sweep row's decoder as a DecoderOrder (its law exact), or None (random orders, speculative, ...)."""
    tokens_per_step = row.get("requested_tokens_per_step")
    tokens_per_step = None if tokens_per_step in (None, ALL) else int(tokens_per_step)
    try:
        return DecoderOrder.of_decoder(row["decoder"], tokens_per_step, dict(row.get("options") or {}))
    except ValueError:
        return None


def fall_note(line: Mapping[str, Any], models: Mapping[str, Any]) -> str:
    """For a setting that fell, what the decoders' exact laws say (`explain_fall`), where they can."""
    if line.get("law") is None:
        return ""
    try:  # a note, not a result: the report the run has trained for is printed whatever it says
        note = explain_fall(models["base"], models["fine-tuned"], load_toyset(line["toyset"]), line["law"])
    except (RuntimeError, ValueError) as error:
        return f" (no exact figures: {error})"
    return f" ({note})" if note else ""


def mark_harm(lines: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Set `harm` on each report line whose validity fell from base to fine-tuned by more than two
    standard errors (`validity_fell`); return those lines."""
    harmed = []
    for line in lines:
        if "base valid" in line and "fine-tuned valid" in line and validity_fell(
                line["base valid"], line["base n"], line["fine-tuned valid"], line["fine-tuned n"]):
            line["harm"] = "FELL"
            harmed.append(line)
    return harmed
