"""Schedules against hand-computed values of the authors' formulas, exact means, aliases, errors."""

import math
import random

import numpy as np
import pytest

from rst_tune.schedules import (
    ALIASES,
    SCHEDULES,
    make_schedule,
    schedule_at,
    schedule_coordinates,
    schedule_params,
)

# (name, params, x, expected p): values worked out by hand from ALGORITHM.md §2.
TABLE = [
    ("constant", {"p": 0.3}, 0.0, 0.3),
    ("constant", {"p": 0.3}, 0.7, 0.3),
    ("step_up", {"switch": 0.4}, 0.0, 0.0),
    ("step_up", {"switch": 0.4}, 0.4, 0.0),
    ("step_up", {"switch": 0.4}, 0.41, 1.0),
    ("step_down", {"switch": 0.4}, 0.4, 1.0),
    ("step_down", {"switch": 0.4}, 0.5, 0.0),
    ("two_level", {"p": 0.2}, 0.5, 0.2),
    ("two_level", {"p": 0.2}, 0.6, 0.8),
    ("linear_mean", {"p": 0.3}, 0.0, 0.0),
    ("linear_mean", {"p": 0.3}, 0.5, 0.3),
    ("linear_mean", {"p": 0.3}, 1.0, 0.6),
    ("linear_mean", {"p": 0.8}, 0.0, 0.6),
    ("linear_mean", {"p": 0.8}, 0.5, 0.8),
    ("linear_mean", {"p": 0.8}, 1.0, 1.0),
    ("linear_mirror", {"p": 0.2}, 0.0, 0.2),
    ("linear_mirror", {"p": 0.2}, 0.5, 0.5),
    ("linear_mirror", {"p": 0.2}, 1.0, 0.8),
    ("linear", {"p_start": 0.1, "p_end": 0.9}, 0.25, 0.3),
    ("cosine", {"p_start": 1.0, "p_end": 0.0}, 0.0, 1.0),
    ("cosine", {"p_start": 1.0, "p_end": 0.0}, 0.5, 0.5),
    ("cosine", {"p_start": 1.0, "p_end": 0.0}, 1.0, 0.0),
    ("cosine", {"p_start": 0.2, "p_end": 0.6}, 1 / 3, 0.3),
    ("step", {"p_early": 0.2, "p_late": 0.7, "switch": 0.3}, 0.3, 0.2),
    ("step", {"p_early": 0.2, "p_late": 0.7, "switch": 0.3}, 0.31, 0.7),
]


@pytest.mark.parametrize("name, params, x, expected", TABLE)
def test_values_match_the_formulas(name, params, x, expected):
    assert make_schedule(name, **params)(x) == pytest.approx(expected, abs=1e-12)


def test_table_covers_every_schedule():
    assert {row[0] for row in TABLE} == set(SCHEDULES)


SHAPES = [
    ("constant", {"p": 0.37}),
    ("step_up", {"switch": 0.3}),
    ("step_down", {"switch": 0.3}),
    ("two_level", {"p": 0.1}),
    ("linear_mean", {"p": 0.25}),
    ("linear_mean", {"p": 0.75}),
    ("linear_mirror", {"p": 0.9}),
    ("linear", {"p_start": 0.9, "p_end": 0.2}),
    ("cosine", {"p_start": 0.1, "p_end": 0.8}),
    ("step", {"p_early": 0.9, "p_late": 0.1, "switch": 0.6}),
]


@pytest.mark.parametrize("name, params", SHAPES)
def test_mean_equals_numeric_integral(name, params):
    schedule = make_schedule(name, **params)
    n = 200_000
    midpoints = (np.arange(n) + 0.5) / n
    integral = float(np.mean([schedule(x) for x in midpoints]))
    assert schedule.mean() == pytest.approx(integral, abs=2e-5)


@pytest.mark.parametrize("name, params", SHAPES)
def test_values_stay_in_unit_interval(name, params):
    schedule = make_schedule(name, **params)
    assert all(0.0 <= schedule(x) <= 1.0 for x in np.linspace(0, 1, 101))


def test_paper_groups_have_their_published_means():
    assert make_schedule("step_up", switch=0.5).mean() == 0.5
    assert make_schedule("step_down", switch=0.5).mean() == 0.5
    assert make_schedule("two_level", p=0.9).mean() == 0.5
    assert make_schedule("linear_mirror", p=0.0).mean() == 0.5
    assert make_schedule("linear_mean", p=0.5).mean() == 0.5


@pytest.mark.parametrize("alias", sorted(ALIASES))
def test_aliases_equal_their_targets(alias):
    target, key = ALIASES[alias]
    assert make_schedule(alias, p=0.3) == make_schedule(target, **{key: 0.3})
    assert schedule_params(alias) == ("p",)


def test_alias_mapping_is_the_authors():
    assert make_schedule("piecewise1", p=0.3) == make_schedule("step_up", switch=0.3)
    assert make_schedule("piecewise2", p=0.3) == make_schedule("step_down", switch=0.3)
    assert make_schedule("piecewise3", p=0.3) == make_schedule("two_level", p=0.3)
    assert make_schedule("linear1", p=0.3) == make_schedule("linear_mean", p=0.3)
    assert make_schedule("linear2", p=0.3) == make_schedule("linear_mirror", p=0.3)


def test_name_params_and_str_describe_it():
    schedule = make_schedule("step", p_early=0.25, p_late=1, switch=0.5)
    assert schedule.name == "step"
    assert dict(schedule.params) == {"p_early": 0.25, "p_late": 1.0, "switch": 0.5}
    assert str(schedule) == "step(p_early=0.25, p_late=1, switch=0.5)"


@pytest.mark.parametrize(
    "name, params, match",
    [
        ("zigzag", {"p": 0.5}, "unknown schedule 'zigzag'"),
        ("constant", {}, "missing parameter 'p'"),
        ("constant", {"p": 0.5, "q": 0.1}, "unexpected parameter 'q'"),
        ("constant", {"p": 1.5}, r"p=1\.5 must be a number in \[0, 1\]"),
        ("step_up", {"switch": -0.1}, "switch=-0.1"),
        ("linear", {"p_start": 0.1, "p_end": math.nan}, "p_end=nan"),
        ("constant", {"p": "high"}, "p='high'"),
    ],
)
def test_bad_input_raises_naming_it(name, params, match):
    with pytest.raises(ValueError, match=match):
        make_schedule(name, **params)


def test_progress_outside_unit_interval_is_an_error():
    with pytest.raises(ValueError, match="x=1.5"):
        make_schedule("constant", p=0.5)(1.5)


@pytest.mark.parametrize("name", SCHEDULES)
def test_coordinates_fix_the_mean_and_round_trip(name):
    """In a family's coordinates p̄ is `mean` exactly, and the shape leaves it unchanged; the
    parameters map back to the same coordinates."""
    rng = random.Random(name)
    for _ in range(100):
        coordinates = {
            k: rng.uniform(-1, 1) if k == "tilt" else rng.uniform(0.1, 0.9) if k == "switch" else rng.random()
            for k in schedule_coordinates(name)
        }
        schedule = schedule_at(name, **coordinates)
        if "mean" in coordinates:
            p = [schedule(i / 4000) for i in range(4001)]
            assert schedule.mean() == pytest.approx(coordinates["mean"], abs=1e-12)
            # the mean by the trapezoid rule too, to its error for a step's jump
            assert sum((a + b) / 2 for a, b in zip(p, p[1:])) / 4000 == pytest.approx(
                coordinates["mean"], abs=1e-3
            )
        assert schedule.coordinates() == pytest.approx(coordinates, abs=1e-9)


def test_tilt_spans_what_the_unit_interval_allows():
    assert dict(schedule_at("linear", mean=0.3, tilt=1).params) == pytest.approx({"p_start": 0, "p_end": 0.6})
    assert dict(schedule_at("cosine", mean=0.8, tilt=-1).params) == pytest.approx(
        {"p_start": 1, "p_end": 0.6}
    )
    assert dict(schedule_at("linear", mean=0.3, tilt=0).params) == pytest.approx(
        {"p_start": 0.3, "p_end": 0.3}
    )
    # a step at switch 0.25 with mean 0.5: rising, p_late can reach 2/3 (p_early 0); falling, p_early 1
    assert dict(schedule_at("step", mean=0.5, tilt=1, switch=0.25).params) == pytest.approx(
        {"p_early": 0.0, "p_late": 2 / 3, "switch": 0.25}
    )
    assert dict(schedule_at("step", mean=0.5, tilt=-1, switch=0.25).params) == pytest.approx(
        {"p_early": 1.0, "p_late": 1 / 3, "switch": 0.25}
    )
    assert schedule_at("step_up", mean=0.3) == make_schedule("step_up", switch=0.7)
    assert schedule_coordinates("two_level") == ("p",)
    with pytest.raises(ValueError, match=r"tilt=1\.5 must be a number in \[-1, 1\]"):
        schedule_at("linear", mean=0.5, tilt=1.5)
    with pytest.raises(ValueError, match="takes mean, tilt, not mean"):
        schedule_at("linear", mean=0.5)
