"""The claim checks of issue 24's study scripts, on made-up rows: the verdicts the results page prints."""

import importlib
import os
import sys

import pytest

BENCHMARKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks")


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, BENCHMARKS)
    try:
        yield {name: importlib.import_module(name) for name in ("target_sweep", "cond_vs_prune", "sipa_factors",
                                                                  "sipa_learned_pruning")}
    finally:
        sys.path.remove(BENCHMARKS)


def _sweep_row(kind, loss, target, top1, annealed=False, stochastic=0.5):
    return {"kind": kind, "loss": loss, "target": target, "annealed": annealed,
            "threshold": {"top1": top1, "gate_activation": target}, "stochastic": {"top1": stochastic}}


def test_target_sweep_claims_pair_rows_by_target(bench):
    rows = [_sweep_row("ind", "pb", 0.4, 0.90), _sweep_row("ind", "pg", 0.4, 0.91),
            _sweep_row("dep", "pb", 0.4, 0.92), _sweep_row("dep", "pg", 0.4, 0.89),
            _sweep_row("ind", "pb", 0.8, 0.93), _sweep_row("dep", "pg", 0.8, 0.94, stochastic=0.95),
            _sweep_row("ind", "pb", 0.8, 0.935, annealed=True)]
    claims = bench["target_sweep"].claims(rows)
    assert (claims["ind_pb_beats_ind_pg"]["wins"], claims["ind_pb_beats_ind_pg"]["of"]) == (0, 1)
    assert (claims["dep_pb_beats_dep_pg"]["wins"], claims["dep_pb_beats_dep_pg"]["of"]) == (1, 1)
    assert (claims["ind_pb_beats_dep_pg"]["wins"], claims["ind_pb_beats_dep_pg"]["of"]) == (1, 2)
    (anneal,) = claims["annealing_beats_constant"]["pairs"]
    assert (anneal["annealed"], anneal["constant"], anneal["annealed_better"]) == (0.935, 0.93, True)
    assert claims["threshold_at_least_stochastic"] == {"wins": 6, "of": 7}


def test_cond_vs_prune_compares_kinds_at_each_target(bench):
    rows = [{"kind": "dense", "target": None, "top1": 0.93, "mac_fraction": 1.0},
            {"kind": "prune", "target": 0.3, "top1": 0.88, "mac_fraction": 0.4},
            {"kind": "cond", "target": 0.3, "top1": 0.90, "mac_fraction": 0.45},
            {"kind": "prune", "target": 0.5, "top1": 0.91, "mac_fraction": 0.6}]
    claim = bench["cond_vs_prune"].claims(rows)["cond_beats_prune"]
    assert (claim["wins"], claim["of"]) == (1, 1)
    assert claim["pairs"][0]["cond"] == {"top1": 0.90, "mac_fraction": 0.45}


def _factor_row(arm, top1, macs, seed=0):
    return {"arm": arm, "seed": seed, "factor": _factor(arm), "top1": top1, "macs": macs}


def _factor(arm):
    return {"nearest": "upsampling", "no_upsampling": "upsampling", "bilinear": "upsampling",
            "expansion_3": "expansion", "width_0.7": "width", "kernel_5": "kernel"}[arm]


def test_sipa_factor_verdicts_weigh_differences_against_seed_noise(bench):
    factors = bench["sipa_factors"]
    rows = [_factor_row("nearest", 0.900, 25e6), _factor_row("nearest", 0.896, 25e6, seed=1),
            _factor_row("no_upsampling", 0.880, 12.5e6), _factor_row("bilinear", 0.899, 25e6),
            _factor_row("expansion_3", 0.870, 12.5e6), _factor_row("width_0.7", 0.890, 15e6),
            _factor_row("kernel_5", 0.901, 30e6)]
    comparison = factors.compare(rows)
    assert comparison["reference_top1"] == pytest.approx(0.898)
    assert comparison["reference_spread_points"] == pytest.approx(0.4)
    by = {a["arm"]: a for a in comparison["arms"]}
    assert by["expansion_3"]["top1_change_points"] == pytest.approx(-2.8)
    assert by["expansion_3"]["points_per_mac_halving"] == pytest.approx(-2.8)  # half the MACs
    assert by["bilinear"]["points_per_mac_halving"] is None  # same MACs: no rate
    verdicts = factors.verdicts(comparison)
    assert verdicts["upsampling_helps"]["holds"] is True  # 1.8 points > 0.4 of noise
    assert verdicts["expansion_matters_most"]["largest"] == "expansion_3"
    assert verdicts["expansion_matters_most"]["holds"] is True
    rows.append(_factor_row("bilinear", 0.895, 25e6, seed=1))  # a repeated arm is compared by its mean
    assert {a["arm"]: a for a in factors.compare(rows)["arms"]}["bilinear"]["top1"] == pytest.approx(0.897)
    rows[4] = _factor_row("expansion_3", 0.897, 12.5e6)  # within the noise: the claim no longer holds
    verdicts = factors.verdicts(factors.compare(rows))
    assert verdicts["expansion_matters_most"]["largest"] == "width_0.7"
    assert verdicts["expansion_matters_most"]["holds"] is False


def _learned(top1, folded):
    return {"config": f"learned {top1}", "phase": "fine_tune", "top1": top1, "folded_mac_fraction": folded}


def test_sipa_learned_pruning_needs_both_the_macs_removed_and_the_accuracy(bench):
    claims = bench["sipa_learned_pruning"].claims
    magnitude = [{"config": "magnitude 50%, 4 epochs", "top1": 0.95, "folded_mac_fraction": 1.0},
                 {"config": "magnitude 50%, 20 epochs (sipa_fashion_mnist_pruned)", "top1": 0.93,
                  "folded_mac_fraction": 1.0}]
    met = claims([_learned(0.90, 0.40), _learned(0.926, 0.51)] + magnitude)
    assert (met["goal_met"], met["gap_points"], met["best_learned"]["top1"]) == (True, 0.4, 0.926)
    too_costly = claims([_learned(0.93, 0.60)] + magnitude)  # accurate, but folding left 60% of the MACs
    assert (too_costly["goal_met"], too_costly["macs_goal_met"], too_costly["verdict"]) == (False, False, "not reproduced")
    too_weak = claims([_learned(0.92, 0.45)] + magnitude)  # 1 point below the 20-epoch magnitude model
    assert (too_weak["goal_met"], too_weak["macs_goal_met"], too_weak["gap_points"]) == (False, True, 1.0)


def test_cond_vs_prune_compares_at_equal_macs_by_interpolating_prune(bench):
    def row(kind, target, top1, macs):
        return {"kind": kind, "target": target, "top1": top1, "mac_fraction": macs}

    rows = [row("dense", None, 0.92, 1.0), row("prune", 0.3, 0.80, 0.30), row("prune", 0.5, 0.84, 0.50),
            row("cond_x30", 0.3, 0.83, 0.40), row("cond_x30", 0.5, 0.90, 0.90)]
    claims = bench["cond_vs_prune"].claims(rows)
    (equal,) = claims["cond_x30_beats_prune_at_equal_macs"]["pairs"]  # 0.90 MACs lies outside Prune's rows
    assert equal["prune_interpolated"] == pytest.approx(0.82) and equal["cond_better"] is True
    assert claims["cond_x30_beats_prune"]["wins"] == 2 and "cond_beats_prune" not in claims
