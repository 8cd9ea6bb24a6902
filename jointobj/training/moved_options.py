"""Objective options that were flags of their own, and where each went: into `objective_kwargs`.

    --blocks 4   ->   --objective logsum --objective_kwargs '{"blocks": 4}'
                      or --objective mixture --objective_kwargs '{"logsum": {"blocks": 4}}'

The recipe checks its command line and YAML against MOVED_OPTIONS before parsing, so an old
flag fails with the flags to write instead (not with argparse's "unrecognized arguments").
"""

from __future__ import annotations

import json

__all__ = ["MOVED_OPTIONS", "moved_option_error"]

# Objective options that were flags of their own, and where each now goes (objective: key in objective_kwargs).
MOVED_OPTIONS: dict[str, list[tuple[str, str]]] = {
    "mask_schedule": [("token_ce", "schedule"), ("mixture", "token_ce.schedule"), ("energy", "token_ce.schedule")],
    "orders": [("logsum", "orders"), ("mixture", "logsum.orders")],
    "blocks": [("logsum", "blocks"), ("mixture", "logsum.blocks")],
    "logsum_mode": [("logsum", "mode"), ("mixture", "logsum.mode")],
    "max_rows": [("logsum", "max_rows"), ("mixture", "logsum.max_rows")],
    "token_ce_weight": [("mixture", "token_ce_weight")],
    "energy_tokens_per_step": [("energy", "tokens_per_step")],
    "energy_negatives": [("energy", "negatives")],
    "energy_decoder": [("energy", "decoder")],
    "energy_parameterisation": [("energy", "parameterisation")],
    "energy_token_ce_weight": [("energy", "added_token_ce_weight")],
    "energy_head_width": [("energy", "head_width")],
    "self_condition_prob": [("token_ce", "self_condition_prob"), ("logsum", "self_condition_prob"),
                            ("mixture", "token_ce.self_condition_prob"), ("mixture", "logsum.self_condition_prob")],
}


def moved_option_error(name: str, value: object = None) -> ValueError:
    """The error for an option that moved into objective_kwargs, naming where it goes for each objective."""
    shown = "..." if value is None else json.dumps(_json_value(value))
    places = []
    for objective, key in MOVED_OPTIONS[name]:
        example = shown
        for part in reversed(key.split(".")):
            example = f'{{"{part}": {example}}}'
        places.append(f"--objective {objective} --objective_kwargs '{example}'")
    return ValueError(f"--{name} is no longer an option of its own: each objective takes its options from "
                      "objective_kwargs (in a YAML config, a mapping under objective_kwargs:). Write "
                      + "; or ".join(places))


def _json_value(value: object) -> object:
    """A command-line string as the JSON value it stands for: '4' -> 4, '0.5' -> 0.5, 'l2r,r2l' -> a list."""
    if not isinstance(value, str):
        return value
    for kind in (int, float):
        try:
            return kind(value)
        except ValueError:
            pass
    return value.split(",") if "," in value else value
