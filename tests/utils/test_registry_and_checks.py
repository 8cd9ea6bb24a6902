"""Building by name and kwargs (Registry.build) and the shared option checks (jointobj/utils/checks.py)."""

import pytest

from jointobj.utils.checks import check_blocks, check_fraction, check_whole_number
from jointobj.utils.registry import Registry

THINGS = Registry("thing")


@THINGS.register("seeded")
class Seeded:
    def __init__(self, width: int = 1, *, seed: int = 0):
        self.width, self.seed = width, seed


@THINGS.register("unseeded")
class Unseeded:
    def __init__(self, width: int = 1):
        self.width = width


@THINGS.register("open")
def open_factory(**options):
    return options


def test_build_passes_kwargs_and_fills_defaults_only_where_taken_and_not_given():
    assert vars(THINGS.build("seeded", {"width": 3}, seed=7)) == {"width": 3, "seed": 7}
    assert vars(THINGS.build("seeded", {"seed": 2}, seed=7)) == {"width": 1, "seed": 2}  # kwargs win
    assert vars(THINGS.build("unseeded", {"width": 3}, seed=7)) == {"width": 3}  # a default it can't take: dropped
    assert THINGS.build("open", {"a": 1}, seed=7) == {"a": 1, "seed": 7}  # **options takes anything


def test_build_names_an_unknown_argument_and_lists_the_accepted_ones():
    with pytest.raises(ValueError, match="thing 'seeded' takes no argument 'widht'; it takes: seed, width"):
        THINGS.build("seeded", {"widht": 3})
    with pytest.raises(ValueError, match="unknown thing 'wide'; known: open, seeded, unseeded"):
        THINGS.build("wide", {})
    with pytest.raises(ValueError, match="must be named by strings"):
        THINGS.build("open", {1: 2})


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "3", None, [2]])
def test_whole_number_refuses_what_is_not_a_count(value):
    with pytest.raises(ValueError, match="n must be a whole number >= 1"):
        check_whole_number("n", value)


def test_whole_number_returns_an_int_and_takes_none_or_zero_where_allowed():
    assert check_whole_number("n", 4.0) == 4 and isinstance(check_whole_number("n", 4.0), int)
    assert check_whole_number("n", None, "all of them") is None
    assert check_whole_number("n", 0, minimum=0) == 0
    with pytest.raises(ValueError, match=r"or None for all of them\), got 0"):
        check_whole_number("n", 0, "all of them")


def test_blocks_and_fractions():
    assert check_blocks("all") == "all" and check_blocks(3) == 3
    for bad in (0, "most", 2.5, True):
        with pytest.raises(ValueError, match="blocks must be a whole number K >= 1 or 'all'"):
            check_blocks(bad)
    assert check_fraction("p", 1) == 1.0
    for bad in (-0.1, 1.1, True, "0.5"):
        with pytest.raises(ValueError, match=r"p must be a number in \[0, 1\]"):
            check_fraction("p", bad)


def test_evaluate_and_generate_refuse_counts_that_are_not_whole_numbers():
    from jointobj.evaluation.generation import generate_texts
    from jointobj.evaluation.sweep import evaluate
    from jointobj.toysets.oracle import OracleDenoiser

    oracle = OracleDenoiser("cities")
    for bad in (0, 2.5, True):
        with pytest.raises(ValueError, match="samples must be a whole number >= 1"):
            evaluate(oracle, ["cities"], ["l2r"], [1], samples=bad)
        with pytest.raises(ValueError, match="batch_size must be a whole number >= 1"):
            evaluate(oracle, ["cities"], ["l2r"], [1], samples=4, batch_size=bad)
        with pytest.raises(ValueError, match=r"gen_length \(generated tokens\) must be a whole number >= 1"):
            generate_texts(oracle, ["<cities>"], "l2r", gen_length=bad)
