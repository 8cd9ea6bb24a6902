"""The joint-validity sweep, as a library function (the eval/ scripts and the CLI are thin command lines
over it).

    from jointobj.evaluation.sweep import evaluate, headline
    rows = evaluate(OracleDenoiser("likes_tennis"), ["likes_tennis"], ["random", "confidence"],
                    tokens_per_step=[1, 2, "all"], samples=2000, seed=0)
    headline(rows)   # per (decoder, toy set): highest tokens/step with validity >= 0.99

    # the frontier: any decoder's knobs, swept (jointobj.evaluation.frontier)
    rows = evaluate(denoiser, ["latin_square_3"], ["l2r"], [1, 2, "all"], samples=400,
                    grid={"threshold": {"tokens_per_step": [1], "threshold": [0.5, 0.7, 0.9]}})

One row per (toy set, decoder, K, options). Every setting of a toy set sees the same prompts
(drawn from the set with `seed`) and a generator freshly seeded with `seed`, so a row is
reproducible on its own.
"""

from __future__ import annotations

import dataclasses
import math
import os
import time
from typing import Any, Mapping, Sequence

import torch
from tqdm import tqdm

from jointobj.decoding.budget import ALL
from jointobj.decoding.decoder_law import DecoderOrder, decoder_log_likelihood
from jointobj.decoding.energies import build_energy
from jointobj.decoding.registry import build_decoder
from jointobj.decoding.rescore import RescoreSpec
from jointobj.diffusion.batch import answer_batch
from jointobj.evaluation.frontier import SweepPoint, sweep_points
from jointobj.evaluation.metrics import (
    Cost,
    coverage,
    expected_coverage,
    joint_validity,
    total_variation,
    tv_noise_floor,
    wilson_interval,
)
from jointobj.toysets.builtin import ToySet
from jointobj.toysets.combined import load_toysets
from jointobj.utils.checks import check_whole_number

__all__ = ["evaluate", "headline"]

VALIDITY_LEVEL = 0.99


def _sample_all(decoder, denoiser, prompts: torch.Tensor, gen_length: int, generator: torch.Generator,
                batch_size: int) -> tuple[torch.Tensor, Cost]:
    """Run the decoder over all prompts in batches -> (answers [n, L] trimmed at the first EOS, as
    `SampleOutput.answer_ids` trims them for validity and TV; per-sample Cost)."""
    answers, steps, rows = [], 0.0, 0.0
    start = time.perf_counter()
    # Samples done and their rate, on stderr: off when it is not a terminal, or with TQDM_DISABLE=1 (--no-progress).
    off = True if os.environ.get("TQDM_DISABLE", "").lower() in ("1", "true") else None
    with tqdm(total=len(prompts), desc=getattr(decoder, "name", type(decoder).__name__), unit="sample",
              disable=off, leave=False) as progress:
        for chunk in prompts.split(batch_size):
            out = decoder.sample(denoiser, chunk, gen_length, generator)
            answers.append(out.answer_ids.cpu())
            steps += float(out.row_steps.double().sum())
            rows += out.rows_per_sample * len(chunk)
            progress.update(len(chunk))
    n = len(prompts)
    return torch.cat(answers), Cost(gen_length, steps / n, rows / n, time.perf_counter() - start)


def evaluate(denoiser: Any, toysets: Sequence[str | ToySet], decoders: Sequence[str] = (),
             tokens_per_step: Sequence[int | str | None] = (1,), samples: int = 1000, seed: int = 0, *,
             decoder_options: Mapping[str, Mapping[str, Any]] | None = None,
             grid: Mapping[str, Mapping[str, Sequence[Any]]] | None = None,
             points: Sequence[SweepPoint] | None = None, batch_size: int = 256,
             tv_repetitions: int = 20, rescore: Sequence[Any] = (), decoder_nll: bool = False) -> list[dict[str, Any]]:
    """Validity, fidelity and cost for every (toy set, decoder setting), and for each setting rescored
    by every spec in `rescore` (jointobj.decoding.rescore.RescoreSpec, e.g. "sir:self:l2r:all,8,step").

    The settings are every (decoder, K) of `decoders` x `tokens_per_step` with `decoder_options`,
    swept further over `grid` (decoder -> option -> values; see jointobj.evaluation.frontier.sweep_points),
    or exactly `points` when given (a list of jointobj.evaluation.frontier.SweepPoint).

    Row keys: toyset, decoder, tokens_per_step (measured: generated tokens / steps per sample),
    requested_tokens_per_step (K or 'all'), gen_length, samples, validity, validity_se
    (binomial standard error), validity_low / validity_high (95% Wilson interval), tv, tv_floor,
    tv_floor_std (None for conditional sets),
    coverage, coverage_exact (what N exact draws cover; None for conditional sets),
    decoder_nll / decoder_nll_se (with `decoder_nll=True`: nats per answer, -log P_decoder of the set's own
    answers for the same prompts, exact for state-determined decoders; None otherwise or when off: it
    costs about two decodes more) beside entropy_nats (H(answer | prompt)),
    steps_per_sample, rows_per_sample, rows_per_token (rows_per_sample / gen_length), wall_s;
    options (the decoder's options), knobs (the swept ones as text, '' when only K was swept);
    rescore (the spec, None without rescoring). A
    rescored row's decoder is "NAME+SPEC"; its steps and rows count every candidate and every
    energy forward. Energies are built per toy set (`exact` knows the set being evaluated).
    """
    check_whole_number("samples", samples)
    check_whole_number("batch_size", batch_size)
    law_nll = decoder_nll
    sets = load_toysets(toysets, tokenizer=getattr(denoiser, "tokenizer", None))  # the ids the model writes
    if points is None:
        points = sweep_points(decoders, tokens_per_step, decoder_options, grid)
    if not points:
        raise ValueError("nothing to evaluate: give decoders (and tokens_per_step), a grid, or points")
    for point in points:  # fail on a bad name or option before any sampling
        build_decoder(point.decoder, point.tokens_per_step, **point.option_dict)
    specs = [RescoreSpec.parse(spec) for spec in rescore]
    rows = []
    for toyset in sets:
        prompts, data_answers = toyset.sample(samples, torch.Generator().manual_seed(seed))  # [N, lp], [N, la]
        floor = tv_noise_floor(toyset, samples, repetitions=tv_repetitions, seed=seed)
        energies = {spec: build_energy(spec.energy, denoiser=denoiser, toysets=[toyset]) for spec in specs}
        for point, spec in ((p, spec) for p in points for spec in [None, *specs]):
            name, k = point.decoder, point.tokens_per_step
            bound = None if spec is None else dataclasses.replace(spec, energy=energies[spec])
            decoder = build_decoder(name, k, rescore=bound, **point.option_dict)
            generator = torch.Generator().manual_seed(seed)
            answers, cost = _sample_all(decoder, denoiser, prompts, toyset.answer_length, generator, batch_size)
            validity = joint_validity(toyset, prompts, answers)
            nll = None  # a rescored decoder's law is not the decoder's
            if law_nll and spec is None:
                nll = data_nll(denoiser, prompts, data_answers, name, k, point.option_dict, batch_size)
            rows.append({
                "toyset": toyset.name,
                "decoder": name if spec is None else f"{name}+{bound}",
                "rescore": None if spec is None else str(bound),
                "tokens_per_step": cost.tokens_per_step,
                "requested_tokens_per_step": ALL if k is None else k,
                "gen_length": toyset.answer_length,
                "samples": samples,
                "validity": validity,
                "validity_se": math.sqrt(validity * (1 - validity) / samples),
                **dict(zip(("validity_low", "validity_high"), wilson_interval(round(validity * samples), samples))),
                "tv": total_variation(toyset, answers),
                "tv_floor": None if floor is None else floor.mean,
                "tv_floor_std": None if floor is None else floor.std,
                "coverage": coverage(toyset, answers),
                "coverage_exact": expected_coverage(toyset, samples),
                "decoder_nll": None if not nll else nll[0],
                "decoder_nll_se": None if not nll else nll[1],
                "entropy_nats": toyset.entropy(),
                "steps_per_sample": cost.steps_per_sample,
                "rows_per_sample": cost.rows_per_sample,
                "rows_per_token": cost.rows_per_sample / toyset.answer_length,
                "wall_s": cost.wall_s,
                "options": {key: value for key, value in point.options},
                "knobs": point.knobs,
            })
    return rows


def data_nll(denoiser: Any, prompts: torch.Tensor, answers: torch.Tensor, name: str, tokens_per_step: int | None,
                options: Mapping[str, Any], batch_size: int = 256) -> tuple[float, float] | None:
    """(mean, standard error) of -log P_decoder(answer | prompt) in nats per answer over data pairs
    [N, lp], [N, la]: the NLL of held-out answers under the decoder itself (its exact law:
    jointobj/decoding/decoder_law.py). None for decoders whose law is not that likelihood (random,
    T != 1, semi-AR blocks, rescoring). Read it against the set's entropy H(answer | prompt)."""
    order = DecoderOrder.of_decoder(name, tokens_per_step, dict(options))
    if order is None:
        return None
    device = getattr(denoiser, "device", torch.device("cpu"))
    values = []
    for p, a in zip(prompts.split(batch_size), answers.split(batch_size)):
        batch = answer_batch(p.to(device), a.to(device))  # [n, lp + la]
        with torch.no_grad():
            values.append(-decoder_log_likelihood(denoiser, batch, [order])[:, 0].double().cpu())
    nll = torch.cat(values)  # [N]
    se = float(nll.std()) / math.sqrt(len(nll)) if len(nll) > 1 else float("nan")
    return float(nll.mean()), se


def headline(rows: Sequence[Mapping[str, Any]], level: float = VALIDITY_LEVEL) -> list[dict[str, Any]]:
    """Per (decoder, toy set), in first-seen order: the highest measured tokens per step at
    which validity *stays* >= `level` -- every row of that pair at or below that rate passes,
    whatever its knobs -- with its cost and knobs beside it; tokens_per_step None when even
    the slowest row fails."""
    groups: dict[tuple[str, str], list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["decoder"], row["toyset"]), []).append(row)
    out = []
    for (decoder, toyset), group in groups.items():
        best = None
        for row in sorted(group, key=lambda r: r["tokens_per_step"]):
            if row["validity"] < level:
                break
            best = row
        out.append({
            "decoder": decoder,
            "toyset": toyset,
            "level": level,
            "tokens_per_step": None if best is None else best["tokens_per_step"],
            "validity": None if best is None else best["validity"],
            "steps_per_sample": None if best is None else best["steps_per_sample"],
            "rows_per_sample": None if best is None else best["rows_per_sample"],
            "rows_per_token": None if best is None else best.get("rows_per_token"),
            "knobs": None if best is None else best.get("knobs"),
        })
    return out
