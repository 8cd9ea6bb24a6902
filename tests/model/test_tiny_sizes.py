"""Named sizes of tiny_masked_lm (jointobj.model.tiny.TINY_SIZES) and the size-measuring script's smoke run."""

import json

import pytest

from jointobj.model.tiny import TINY_SIZES, tiny_masked_lm


@pytest.mark.parametrize("size", sorted(TINY_SIZES))
def test_each_named_size_builds_its_width_and_depth(size):
    model = tiny_masked_lm("bert", vocab_size=40, size=size)
    assert (model.config.hidden_size, model.config.num_hidden_layers) == TINY_SIZES[size]


def test_default_is_the_smallest_and_explicit_dimensions_override_the_preset():
    default = tiny_masked_lm("modernbert", vocab_size=40)
    assert (default.config.hidden_size, default.config.num_hidden_layers) == TINY_SIZES["xsmall"] == (32, 2)
    mixed = tiny_masked_lm("modernbert", vocab_size=40, size="medium", num_layers=1)
    assert (mixed.config.hidden_size, mixed.config.num_hidden_layers) == (128, 1)
    growth = [hidden * hidden * layers for hidden, layers in TINY_SIZES.values()]  # ~ parameters per preset
    assert growth == sorted(growth) and len(set(growth)) == len(growth)  # listed from the smallest up


def test_unknown_size_lists_the_known_ones():
    with pytest.raises(ValueError, match="unknown tiny size 'huge'; known: xsmall, small, medium"):
        tiny_masked_lm("modernbert", vocab_size=40, size="huge")


@pytest.mark.slow
def test_model_sizes_script_stops_at_the_first_size_that_learns(tmp_path, capsys):
    from helpers import load_script

    out = tmp_path / "sizes.json"
    rows = load_script("eval/model_sizes.py").main(["--toyset", "likes_tennis", "--sizes", "small,xsmall",
                                                    "--steps", "3", "--samples", "20", "--level", "0.0",
                                                    "--json", str(out)])
    assert [r["size"] for r in rows] == ["xsmall"]  # level 0: the smallest size already "learns"
    assert json.loads(out.read_text())[0]["validity_low"] <= rows[0]["validity"]
    printed = capsys.readouterr().out
    assert "likes_tennis: xsmall" in printed
    assert "coverage_exact" in printed  # validity is printed with coverage beside exact sampling's
    assert 0.0 <= rows[0]["coverage"] <= 1.0 and 0.0 < rows[0]["coverage_exact"] <= 1.0
