"""Measured training-step peaks in `nmt bench memory` and the search of `nmt bench capacity`."""
import argparse
import json

import pytest
import torch

from nmt.bench import capacity, memory
from nmt.bench.capacity import probe_step, search, way_builders
from nmt.bench.memory import plain_model_config
from training.toy import toy_config, write_config

WAYS = ("reversible", "plain", "checkpointed")


def _reversible_toy(tmp_path, **model):
    config = toy_config(tmp_path)
    config["model"]["encoder"].update(cell="revgru", hidden=16)
    config["model"]["decoder"].update(cell="revgru", hidden=16)
    config["model"]["attention"] = {"context": "emb+slice", "size": 4, "precision": 32}
    config["model"].update(embedding_dim=16, **model)
    return config


@pytest.fixture(scope="module")
def config_path(tmp_path_factory):
    tmp_path = tmp_path_factory.mktemp("peak")
    return write_config(tmp_path, _reversible_toy(tmp_path))


def _run(module, argv, capsys):
    parser = argparse.ArgumentParser()
    module.add_arguments(parser)
    assert module.run(parser.parse_args(argv)) == 0
    return capsys.readouterr().out


def test_bench_memory_reports_the_step_peak_of_the_three_ways(config_path, capsys):
    report = json.loads(_run(memory, ["--config", str(config_path), "--batches", "2", "--json"],
                             capsys))
    peaks = report["step_peak"]
    for way in WAYS:
        figures = peaks[way]
        assert figures["peak_step_bytes"] > 0
        assert figures["peak_total_bytes"] == figures["resident_bytes"] + figures["peak_step_bytes"]
        # Adam's two moments per parameter are resident, not in the step's peak
        assert figures["optimizer_state_bytes"] >= 2 * figures["parameter_bytes"]
        assert len(figures["per_batch_peak_step_bytes"]) == 2
        assert figures["peak_step_bytes"] == max(figures["per_batch_peak_step_bytes"])
        assert "cuda_peak_step_bytes" not in figures  # CPU run
    # the existing sections keep their fields and gain peak_step_bytes
    assert report["reversible"]["peak_step_bytes"] == peaks["reversible"]["peak_step_bytes"]
    assert report["plain"]["peak_step_bytes"] == peaks["plain"]["peak_step_bytes"]
    assert "encoder_ratio" in report["reversible"] and "recurrent_saved_bytes" in report["plain"]
    assert peaks["reversible_vs_plain"] == pytest.approx(
        peaks["reversible"]["peak_step_bytes"] / peaks["plain"]["peak_step_bytes"])
    # gradients are created in the step: the peak holds at least one full set of them
    assert peaks["plain"]["peak_step_bytes"] >= peaks["plain"]["parameter_bytes"]
    text = _run(memory, ["--config", str(config_path), "--batches", "1", "--at-peak"], capsys)
    assert "peak_step_bytes" in text and "checkpointed" in text and " from aten." in text


def test_capacity_json_names_each_way_and_its_next_probe_does_not_fit(config_path, capsys):
    report = json.loads(_run(capacity, ["--config", str(config_path), "--budget-mib", "1.5",
                                        "--length", "12", "--json"], capsys))
    assert report["vary"] == "batch" and report["length"] == 12
    budget = report["budget_bytes"]
    assert budget == int(1.5 * 2**20)
    for way in WAYS:
        row = report[way]
        assert row["max_batch"] >= 1
        assert row["at_max"]["peak_total_bytes"] <= budget
        assert row["first_over"] == row["max_batch"] + 1
        fitting = [p["value"] for p in row["probes"] if p["fits"]]
        assert max(fitting) == row["max_batch"]
        assert all(not p["fits"] for p in row["probes"] if p["value"] > row["max_batch"])
    assert report["reversible_vs_plain"] == pytest.approx(
        report["reversible"]["max_batch"] / report["plain"]["max_batch"])


def test_the_found_batch_fits_and_one_more_does_not_by_the_tracker(tmp_path):
    from nmt.config import config_from_dict

    config = config_from_dict(_reversible_toy(tmp_path))
    budget = int(1.2 * 2**20)
    builders = way_builders(config.model, plain_model_config(config.model), 48,
                            device=torch.device("cpu"), seed=0)
    for way in WAYS:
        def probe(value, build=builders[way]):
            return probe_step(build, config.train, batch=value, length=10, vocab=48,
                              budget=budget, device=torch.device("cpu"), seed=0)
        found = search(probe, first=1, cap=1 << 12)
        best = found["value"]
        assert probe(best)["peak_total_bytes"] <= budget
        assert probe(best + 1) is None
        # without the early stop, the step at best + 1 really passes the budget
        unlimited = probe_step(builders[way], config.train, batch=best + 1, length=10, vocab=48,
                               budget=1 << 40, device=torch.device("cpu"), seed=0)
        assert unlimited["peak_total_bytes"] > budget


def test_capacity_over_length_and_the_doubling_cap(config_path, capsys):
    report = json.loads(_run(capacity, ["--config", str(config_path), "--budget-mib", "0.5",
                                        "--vary", "length", "--batch", "32", "--json"], capsys))
    assert report["batch"] == 32
    for way in WAYS:
        assert report[way]["max_length"] >= 2
        assert report[way]["first_over"] == report[way]["max_length"] + 1
    calls = []
    found = search(lambda v: calls.append(v) or {"peak_total_bytes": v}, first=1, cap=8)
    assert found["value"] == 8 and found["first_over"] is None and calls == [1, 2, 4, 8]
    nothing = search(lambda v: None, first=2, cap=8)
    assert nothing["value"] == 1 and nothing["first_over"] == 2


@pytest.mark.parametrize("peak, on_line", [
    (lambda v: 10_000 + 37 * v, True),  # affine, as a step's peak nearly is
    (lambda v: 10_000 + 37 * v + v * v // 50, False),  # convex
    (lambda v: 10_000 + 3000 * int(v ** 0.5), False)])  # concave, in jumps
def test_the_budget_guided_search_finds_the_bisection_answer_in_fewer_probes(peak, on_line):
    budget = 40_000
    def probe(v, calls):
        calls.append(v)
        return {"peak_total_bytes": peak(v)} if peak(v) <= budget else None
    plain_calls, guided_calls = [], []
    plain = search(lambda v: probe(v, plain_calls), first=1, cap=1 << 16)
    guided = search(lambda v: probe(v, guided_calls), first=1, cap=1 << 16, budget=budget)
    assert guided["value"] == plain["value"] and guided["first_over"] == plain["value"] + 1
    assert peak(guided["value"]) <= budget < peak(guided["value"] + 1)
    assert len(guided_calls) <= len(plain_calls) + 2  # a curved peak may cost a probe or two
    if on_line:  # 1, 2, then jumps of at most 8x to the line's guess, and its neighbour
        assert guided_calls == [1, 2, 16, 128, 810, 811], guided_calls


def test_capacity_text_table_and_a_plain_config_is_refused(tmp_path, config_path, capsys):
    text = _run(capacity, ["--config", str(config_path), "--budget-mib", "1", "--length", "6"],
                capsys)
    assert "max_batch" in text and "reversible / plain" in text and "peak_total" in text
    plain = write_config(tmp_path, toy_config(tmp_path), name="plain.yaml")
    from nmt.errors import UserError

    with pytest.raises(UserError, match="revgru or revlstm"):
        _run(capacity, ["--config", str(plain), "--budget-mib", "1"], capsys)
