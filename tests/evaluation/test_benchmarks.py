"""Benchmark scripts run in-process at tiny sizes: they print a table and write JSON (no timing is asserted)."""

import json

import pytest
import torch

from helpers import load_script


def test_bench_losses_writes_both_steps_and_their_ratio(tmp_path, capsys):
    out = tmp_path / "bench_losses.json"
    rows = load_script("eval/bench_losses.py").main(
        ["--batch", "2", "--length", "8", "--hidden", "32", "--vocab", "50", "--repeats", "2", "--json", str(out)])
    assert [row["step"] for row in rows] == ["bare_hf", "token_ce"]
    saved = json.loads(out.read_text())
    assert saved["rows"][0]["ratio_to_bare"] == 1.0 and "environment" in saved
    assert "token_ce" in capsys.readouterr().out


def test_bench_logsum_writes_a_row_per_m_and_k_with_its_summary(tmp_path):
    out = tmp_path / "bench_logsum.json"
    rows = load_script("eval/bench_logsum.py").main(
        ["--batch", "2", "--length", "6", "--hidden", "16", "--vocab", "20", "--orders", "1", "2", "--blocks", "2",
         "--repeats", "1", "--json", str(out)])
    saved = json.loads(out.read_text())
    assert saved["rows"] and "environment" in saved
    assert [(row["M"], row["K"]) for row in rows] == [(1, "2"), (2, "2")]
    assert all(row[key] > 0 for row in rows for key in ("exact_peak_bytes", "sampled_peak_bytes", "sampled_s"))
    by_m = {row["M"]: row for row in rows}
    assert saved["summary"]["exact_peak_M2_over_M1_K2"] == by_m[2]["exact_peak_bytes"] / by_m[1]["exact_peak_bytes"]


def test_the_cpu_memory_ledger_counts_what_a_step_holds_at_once():
    peak_bytes = load_script("eval/bench_logsum.py").peak_bytes

    def step() -> None:
        first = torch.ones(1000)  # 4000 bytes
        second = torch.ones(2000)  # 8000 bytes, both alive: 12000
        del first, second
        torch.ones(500)  # 2000 bytes after they were freed

    assert peak_bytes(step, torch.device("cpu")) == 12000


def test_the_ledger_is_the_library_one():
    from jointobj.evaluation.benchmark import tensor_peak_bytes

    assert load_script("eval/bench_logsum.py").peak_bytes(lambda: torch.ones(10), torch.device("cpu")) == 40
    assert tensor_peak_bytes(lambda: torch.ones(10)) == 40


@pytest.mark.slow  # the memory cells run in fresh processes
def test_bench_decoder_law_writes_time_ratios_and_memory_per_m(tmp_path, capsys):
    out = tmp_path / "bench_decoder_law.json"
    rows = load_script("eval/bench_decoder_law.py").main(
        ["--sets", "agreement", "--budgets", "2", "--orders", "1,2", "--batch", "4", "--memory-batch", "4",
         "--repeats", "1", "--json", str(out)])
    time_rows = [row for row in rows if row["part"] == "time"]
    assert [(row["step"], row["K"]) for row in time_rows] == [("token_ce", None), ("law", 2),
                                                               ("0.5 token_ce + 0.5 law", 2)]
    assert time_rows[0]["ratio_to_token_ce"] == 1.0 and all(row["median_ms"] > 0 for row in time_rows)
    # K = 2: the decoder's two steps of 4 rows, run with grad and scored as they are (decoder_scores): no
    # second pass over the blocks, no recomputation
    assert [(row["forwards"], row["forward_rows"]) for row in time_rows] == [(1, 4), (2, 8), (3, 12)]
    memory = [row for row in rows if row["part"] == "memory"]
    assert [row["M"] for row in memory] == [None, 1, 2]
    assert all(row["tensor_peak_mib"] > 0 and row["maxrss_mib"] > 0 for row in memory)
    assert memory[2]["orders"] == ["confidence:steps=2", "margin:steps=2"]
    saved = json.loads(out.read_text())
    assert len(saved["rows"]) == len(rows) and "environment" in saved
    assert "ratio_to_token_ce" in capsys.readouterr().out
