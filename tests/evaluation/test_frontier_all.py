"""eval/frontier_all.py: the oracle and a trained tiny model per group of sets, every decoder of the
frontier, one JSON, one table, one plot; models reused from --out."""

import json

import pytest

from helpers import load_script


def script():
    return load_script("eval/frontier_all.py")


def _row(model, toyset, decoder, setting, **values):
    knobs = "" if setting.startswith("K=") else setting
    k = setting[2:] if setting.startswith("K=") else None
    return {"model": model, "toyset": toyset, "decoder": decoder, "knobs": knobs, "requested_tokens_per_step": k,
            "gen_length": 9, **values}


def test_headline_takes_each_model_s_own_rows():
    rows = [_row("trained", "latin_square_3", "l2r", "K=1", validity=0.8, tokens_per_step=1.0),
            _row("oracle", "latin_square_3", "l2r", "K=1", validity=1.0, tokens_per_step=1.0),
            _row("trained", "latin_square_3", "speculative", "drafts=4", validity=0.7, tokens_per_step=2.5),
            _row("trained", "latin_square_3", "speculative", "drafts=1", validity=0.78, tokens_per_step=2.0),
            _row("oracle", "latin_square_3", "speculative", "drafts=1", validity=1.0, tokens_per_step=2.3)]
    [head] = script().headline_rows(rows)
    assert head == {"toyset": "latin_square_3", "answer_tokens": 9, "trained l2r K=1": 0.8,
                    "trained spec tok/step": 2.0, "trained spec valid": 0.78,
                    "oracle spec tok/step": 2.3, "oracle spec valid": 1.0}


def test_an_unknown_set_fails_with_the_covered_ones(capsys):
    with pytest.raises(SystemExit):
        script().parse_args(["--sets", "likes_tennis,latin_square_9"])
    error = capsys.readouterr().err
    assert "latin_square_9" in error and "sudoku_4" in error


@pytest.mark.slow
def test_smoke_trains_once_sweeps_both_models_and_reuses(tmp_path, capsys):
    out, js, png = tmp_path / "models", tmp_path / "rows.json", tmp_path / "frontier.png"
    argv = ["--sets", "likes_tennis,latin_square_3", "--steps", "2", "--samples", "6", "--out", str(out),
            "--json", str(js), "--plot", str(png)]
    rows = script().main(argv)
    per_model = 2 * 3 + 2 + 2  # l2r and confidence at K = 1, 2, all; speculative drafts 1, 4; threshold 0.5, 0.9
    assert len(rows) == 2 * 2 * per_model
    assert {(r["model"], r["toyset"]) for r in rows} == {(m, s) for m in ("trained", "oracle")
                                                          for s in ("likes_tennis", "latin_square_3")}
    assert {r["setting"] for r in rows if r["decoder"] == "speculative"} == {"drafts=1", "drafts=4"}
    assert all(r["validity"] == 1.0 for r in rows if r["model"] == "oracle" and r["decoder"] == "speculative")
    saved = json.loads(js.read_text())
    assert len(saved["rows"]) == len(rows) and [t["toyset"] for t in saved["target"]] == ["latin_square_3"]
    assert png.stat().st_size > 0
    printed = capsys.readouterr().out
    assert "trained spec tok/step" in printed and "target (sets of >= 8 answer tokens)" in printed
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()}
    assert {p.parent.name for p in stamps} >= {"phrases", "latin_square_3"}  # one model per group
    script().main(argv)
    assert "already holds a base" in capsys.readouterr().out
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*") if p.is_file()} == stamps  # reused, not retrained
