"""The validity / steps / compute frontier: sweep any decoder's knobs, and read the target off it.

    points = sweep_points(["confidence"], [1, 2, "all"],
                          grid={"threshold": {"threshold": [0.5, 0.7, 0.9]},
                                "speculative": {"drafts": [1, 3], "draft_length": [4, None]}})
    rows = evaluate(denoiser, ["latin_square_3"], points=points, samples=400)
    target_status(rows)        # per (model, set of >= 8 answer tokens): met or missed, and the best row

A sweep point is one decoder setting: a registered decoder, its K (`tokens_per_step`) and its
options. A grid maps a decoder name to option values (the cartesian product is swept); a
`tokens_per_step` entry in a grid replaces the shared K list for that decoder, so decoders
whose speed is set by another knob (a threshold, a draft length) are not also swept over K.
On a command line a grid is `NAME:KEY=V1|V2[,KEY=V1|V2]` (`parse_grid`), values `all` / `none`
meaning None.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping, Sequence

from jointobj.decoding.budget import parse_tokens_per_step
from jointobj.decoding.registry import DECODERS

__all__ = ["REPORT_GRID", "SweepPoint", "TARGET", "TARGET_COLUMNS", "Target", "parse_grid", "registered_grid",
           "setting_label", "sweep_points", "target_status"]

# What the recipes' final report sweeps beside its plain decoders: the speculative decoder (its rate is
# measured, so it runs once per option set) and the confidence threshold (one step budget, K = 1).
REPORT_GRID: dict[str, dict[str, list[Any]]] = {
    "speculative": {"tokens_per_step": [None], "drafts": [1]},
    "threshold": {"tokens_per_step": [1], "threshold": [0.9]},
}


@dataclass(frozen=True)
class SweepPoint:
    """One decoder setting: `build_decoder(decoder, tokens_per_step, **options)`; `swept` names the
    options the grid varied (shown in tables as the row's knobs)."""

    decoder: str
    tokens_per_step: int | None = 1
    options: tuple[tuple[str, Any], ...] = ()
    swept: tuple[str, ...] = ()

    @property
    def option_dict(self) -> dict[str, Any]:
        return dict(self.options)

    @property
    def knobs(self) -> str:
        """The swept options as `key=value` words ('' when nothing but K was swept)."""
        shown = {k: v for k, v in self.options if k in self.swept}
        return " ".join(f"{k}={'all' if v is None else v}" for k, v in shown.items())


def _value(text: str) -> Any:
    """A grid value from text: all / none -> None, true / false, int, float, else the string."""
    lowered = text.strip().lower()
    if lowered in ("all", "none"):
        return None
    if lowered in ("true", "false"):
        return lowered == "true"
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            pass
    return text.strip()


def registered_grid(grid: Mapping[str, Mapping[str, Sequence[Any]]]) -> dict[str, dict[str, list[Any]]]:
    """The entries of `grid` whose decoder is registered (a grid written for decoders a given
    install may not have)."""
    return {name: {k: list(v) for k, v in axes.items()} for name, axes in grid.items() if name in DECODERS}


def setting_label(row: Mapping[str, Any]) -> str:
    """A row's decoder setting in a few characters: its knobs, else K=..."""
    return row.get("knobs") or f"K={row['requested_tokens_per_step']}"


def parse_grid(text: str) -> tuple[str, dict[str, list[Any]]]:
    """`NAME:KEY=V1|V2[,KEY=V1|V2]` -> (NAME, {KEY: [values]}); e.g.
    `speculative:drafts=1|3,draft_length=4|all` or `threshold:threshold=0.5|0.7|0.9`."""
    name, _, body = text.partition(":")
    name = name.strip()
    if not name:
        raise ValueError(f"grid {text!r} has no decoder name; write NAME:KEY=V1|V2[,KEY=V1|V2], "
                         "e.g. 'speculative:drafts=1|3,draft_length=4|all'")
    grid: dict[str, list[Any]] = {}
    for part in filter(str.strip, body.split(",")):
        key, eq, values = part.partition("=")
        if not eq or not key.strip() or not values.strip():
            raise ValueError(f"grid {text!r}: {part!r} is not KEY=V1|V2; e.g. 'threshold:threshold=0.5|0.9'")
        grid[key.strip()] = [_value(v) for v in values.split("|")]
    return name, grid


def sweep_points(decoders: Sequence[str], tokens_per_step: Sequence[int | str | None],
                 decoder_options: Mapping[str, Mapping[str, Any]] | None = None,
                 grid: Mapping[str, Mapping[str, Sequence[Any]]] | None = None) -> list[SweepPoint]:
    """Every decoder of `decoders` (then every other decoder named in `grid`) at every K of
    `tokens_per_step` (or its grid's own K list) and every combination of its grid's options,
    on top of its fixed `decoder_options`."""
    decoder_options, grid = decoder_options or {}, grid or {}
    shared_ks = [parse_tokens_per_step(k) for k in tokens_per_step]
    points = []
    for name in dict.fromkeys([*decoders, *grid]):
        axes = dict(grid.get(name, {}))
        ks = [parse_tokens_per_step(k) for k in axes.pop("tokens_per_step", [])] or shared_ks
        if not ks:
            raise ValueError(f"decoder {name!r} has no tokens per step to run: give tokens_per_step or a grid "
                             f"entry tokens_per_step=...")
        for key, values in axes.items():
            if isinstance(values, (str, bytes)) or not isinstance(values, Iterable) or not list(values):
                raise ValueError(f"grid of {name!r}: {key} needs a non-empty list of values, got {values!r}")
        fixed = dict(decoder_options.get(name, {}))
        for combination in itertools.product(*axes.values()):
            options = {**fixed, **dict(zip(axes, combination))}
            for k in ks:
                points.append(SweepPoint(name, k, tuple(options.items()), tuple(axes)))
    return points


# ---------------------------------------------------------------- the target


@dataclass(frozen=True)
class Target:
    """Decode sets of >= `min_answer_tokens` tokens at >= `tokens_per_step` tokens per sequential
    step with validity no lower than the model's own one-token-per-step validity (within one
    standard error of the difference), TV within `tv_gap` of its TV, and at most
    `rows_per_token` forward rows per generated token. The reference is `reference` (decoder,
    K): one token per step left to right, the law an l2r speculative decoder samples exactly."""

    min_answer_tokens: int = 8
    tokens_per_step: float = 4.0
    tv_gap: float = 0.02
    rows_per_token: float = 32.0
    reference: tuple[str, int] = ("l2r", 1)

    def describe(self) -> str:
        """The target in one line, as the reports print it above the status table."""
        name, k = self.reference
        return (f"target (sets of >= {self.min_answer_tokens} answer tokens): >= {self.tokens_per_step:g} tokens per "
                f"step, validity within one standard error of the model's own {name} K={k} validity, TV within "
                f"{self.tv_gap:g} of its TV, <= {self.rows_per_token:g} rows per token")


TARGET = Target()
# target_status's columns as the recipes' report and eval/frontier_all.py print them
TARGET_COLUMNS = ["model", "toyset", "met", "reference_validity", "reference_tv", "best_decoder", "best_knobs",
                  "best_tokens_per_step", "best_validity", "best_tv", "best_rows_per_token"]


def _passes(row: Mapping[str, Any], ref: Mapping[str, Any], target: Target) -> bool:
    se = math.hypot(row["validity_se"], ref["validity_se"])
    if row["validity"] < ref["validity"] - se:
        return False
    if ref["tv"] is not None and row["tv"] is not None and row["tv"] > ref["tv"] + target.tv_gap:
        return False
    return row["tokens_per_step"] >= target.tokens_per_step and row["rows_per_token"] <= target.rows_per_token


def target_status(rows: Sequence[Mapping[str, Any]], target: Target = TARGET) -> list[dict[str, Any]]:
    """Per (model, toy set) with >= target.min_answer_tokens answer tokens: `met`, the reference
    row's validity / TV, and the best row (`best_*`: the fastest passing row if met, else the
    fastest row that keeps validity and TV, whatever its speed and rows). Rows rescored with the
    `exact` energy (oracle knowledge) do not count. Rows need the
    `evaluate` keys; `model` is optional (one model when absent). A set without the reference
    row (decoder, K) is reported with met None, and one whose reference validity is 0 as not met
    (keeping a validity of 0 is no achievement; `note` says so)."""
    groups: dict[tuple[Any, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        if row["gen_length"] >= target.min_answer_tokens:
            groups.setdefault((row.get("model"), row["toyset"]), []).append(row)
    out = []
    for (model, toyset), group in groups.items():
        name, k = target.reference
        refs = [r for r in group if r["decoder"] == name and r["requested_tokens_per_step"] == k and not r.get("knobs")]
        status: dict[str, Any] = {"model": model, "toyset": toyset, "gen_length": group[0]["gen_length"],
                                  "met": None, "reference": f"{name} K={k}"}
        if refs:
            ref = refs[0]
            status.update(reference_validity=ref["validity"], reference_tv=ref["tv"])
            # the toy set's exact energy is oracle knowledge, not something a trained model decodes with
            candidates = [r for r in group if r is not ref and ":exact" not in str(r.get("rescore"))]
            passing = [r for r in candidates if _passes(r, ref, target)]
            relaxed = Target(target.min_answer_tokens, 0.0, target.tv_gap, math.inf, target.reference)
            keeping = [r for r in candidates if _passes(r, ref, relaxed)]
            best = max(passing or keeping, key=lambda r: r["tokens_per_step"], default=None)
            never_valid = ref["validity"] == 0  # "as valid as one token per step" would hold for any decoder
            status["met"] = bool(passing) and not never_valid
            if never_valid:
                status["note"] = "the model's own one-token-per-step law is never valid here: nothing to keep"
            if best is not None:
                status.update({f"best_{key}": best.get(key) for key in
                               ("decoder", "knobs", "tokens_per_step", "validity", "tv", "rows_per_token")})
        out.append(status)
    return out
