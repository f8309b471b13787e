"""Router metrics against hand-computed cases."""

from __future__ import annotations

import math

import numpy as np
import pytest

from routers.metrics import aiq, apgr, cpt, hull_cost_for, hull_quality_at, non_decreasing_hull

# Sorted by cost: (0, .5), (.2, .7), (.5, .6), (1, .8). (.5, .6) lies under the chord (.2, .7)-(1, .8)
# (0.7375 at x=.5), so the hull is (0, .5), (.2, .7), (1, .8).
POINTS = np.array([[0.0, 0.5], [0.5, 0.6], [0.2, 0.7], [1.0, 0.8]])


def test_hull_drops_points_under_chords_and_sorts_by_cost() -> None:
    assert non_decreasing_hull(POINTS).tolist() == [[0.0, 0.5], [0.2, 0.7], [1.0, 0.8]]


def test_hull_stops_at_best_quality_and_keeps_best_of_equal_costs() -> None:
    hull = non_decreasing_hull(np.array([[0.0, 0.5], [0.5, 0.9], [0.5, 0.4], [1.0, 0.7]]))
    assert hull.tolist() == [[0.0, 0.5], [0.5, 0.9]]


def test_aiq_is_trapezoid_area_under_hull() -> None:
    # 0.2 * (0.5 + 0.7) / 2 + 0.8 * (0.7 + 0.8) / 2 = 0.12 + 0.6
    assert aiq(POINTS, reference_cost=1.0) == pytest.approx(0.72)


def test_aiq_normalises_cost_and_holds_hull_flat_to_one() -> None:
    # costs 0.1 and 0.5 of 2.0 -> x = .05, .25; area .2 * (.5 + .9) / 2 + .75 * .9 = .14 + .675
    assert aiq(np.array([[0.1, 0.5], [0.5, 0.9]]), reference_cost=2.0) == pytest.approx(0.815)


def test_aiq_integrates_only_up_to_the_reference_cost() -> None:
    # hull from (0, .5) to (2, .9): at x = 1 it is .7; area (.5 + .7) / 2
    assert aiq(np.array([[0.0, 0.5], [2.0, 0.9]]), reference_cost=1.0) == pytest.approx(0.6)


def test_aiq_starts_at_the_cheapest_point() -> None:
    assert aiq(np.array([[0.5, 1.0]]), reference_cost=1.0) == pytest.approx(0.5)


def test_cost_and_quality_read_outs_interpolate_the_hull() -> None:
    assert hull_quality_at(POINTS, 0.6) == pytest.approx(0.75)
    assert hull_cost_for(POINTS, 0.75) == pytest.approx(0.6)  # .2 + (.75 - .7) / (.1 / .8)
    assert hull_cost_for(POINTS, 0.4) == 0.0
    assert math.isnan(hull_cost_for(POINTS, 0.9))
    assert math.isnan(hull_quality_at(np.array([[0.3, 0.5]]), 0.1))


def test_apgr_is_area_under_pgr() -> None:
    # PGR = [0, .75, 1]; trapezoids .5 * .375 + .5 * .875
    assert apgr(np.array([0.0, 0.5, 1.0]), np.array([0.6, 0.75, 0.8]), weak=0.6, strong=0.8) == pytest.approx(0.625)


def test_apgr_of_random_mixing_is_one_half() -> None:
    shares = np.linspace(0, 1, 11)
    assert apgr(shares, 0.6 + 0.2 * shares, weak=0.6, strong=0.8) == pytest.approx(0.5)


def test_cpt_interpolates_first_crossing() -> None:
    shares, quality = np.array([0.0, 0.5, 1.0]), np.array([0.6, 0.75, 0.8])
    assert cpt(shares, quality, 0.6, 0.8, 0.5) == pytest.approx(1 / 3)  # .5 * (.5 / .75)
    assert cpt(shares, quality, 0.6, 0.8, 0.8) == pytest.approx(0.6)  # .5 + .5 * (.05 / .25)
    assert math.isnan(cpt(shares, np.array([0.6, 0.62, 0.7]), 0.6, 0.8, 0.8))
