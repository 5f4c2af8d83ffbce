"""results.json collection and the RESULTS.md table, on fabricated runs (no training)."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from nmt.errors import UserError
from nmt.results import (best_checkpoint_memory_figures, collect_run_results,
                         mean_memory_figures, training_throughput)
from nmt.results_table import load_results, render_results_table

REPO = Path(__file__).resolve().parents[2]
MAKE_RESULTS = REPO / "recipes" / "multi30k" / "make_results.py"
BLEU_SIG = "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:2.6.0"
BLEU_LC_SIG = "nrefs:1|case:lc|eff:no|tok:13a|smooth:exp|version:2.6.0"
CHRF_SIG = "nrefs:1|case:mixed|eff:yes|nc:6|nw:0|space:no|version:2.6.0"


def fabricated(name, encoder, *, bleu, budget="--epochs 10", context="hidden", size=None,
               bits=3, memory=None, tokens_per_sec=1500.0, pair="en-de", seed=1):
    return {
        "format": 1, "name": name, "config": f"configs/multi30k/{name}.yaml",
        "run_dir": f"runs/multi30k-{name}",
        "model": {"encoder": encoder, "decoder": encoder, "hidden": 300, "layers": 1,
                  "context": context, "size": size, "precision": 32, "max_forget_bits": bits},
        "language_pair": pair,
        "test": {"split": "test_2016_flickr", "beam_size": 5,
                 "cased": {"bleu": bleu, "chrf": bleu + 25.0, "bleu_signature": BLEU_SIG,
                           "chrf_signature": CHRF_SIG, "num_sentences": 1000},
                 "lowercased": {"bleu": bleu + 1.5, "chrf": bleu + 26.0,
                                "bleu_signature": BLEU_LC_SIG, "chrf_signature": CHRF_SIG,
                                "num_sentences": 1000}},
        "training": {"epochs": 10, "steps": 2300, "stop_reason": "max_epochs", "wall_minutes": 61.25,
                     "best_valid_bleu": bleu + 2, "tokens_per_sec": tokens_per_sec,
                     "max_epochs": 10, "max_minutes": None, "seed": seed},
        "memory": memory or {}, "memory_best": memory or {}, "bench_memory": None, "budget": budget, "wall_seconds": 3900.0,
        "machine": {"arch": "x86_64", "cores": 2, "processor": "AMD EPYC", "cuda": None},
        "commit": "0123456789ab", "finished": "2026-11-28T17:00:00+00:00",
    }


def parse_table(markdown: str):
    """The first Markdown table -> list of {header: cell} rows."""
    lines = []
    for line in markdown.splitlines():
        if line.startswith("|"):
            lines.append(line)
        elif lines:
            break
    header = [cell.strip() for cell in lines[0].strip("|").split("|")]
    return [dict(zip(header, (cell.strip() for cell in line.strip("|").split("|"))))
            for line in lines[2:]]


def grid_results():
    memory = {"encoder_ratio": 11.94, "encoder_optimal_ratio": 14.46, "decoder_ratio": 17.25,
              "decoder_optimal_ratio": 21.0, "activation_mib": 3.2}
    return [
        dict(fabricated("revgru-emb20h", "revgru", bleu=29.62, context="emb+slice", size=20,
                        memory=memory),
             bench_memory={"reversible": {"encoder_ratio": 12.04, "decoder_ratio": 17.31},
                           "plain": {}, "measured_recurrent_ratio": 16.64}),
        fabricated("gru", "gru", bleu=30.0),
        fabricated("gru-emb20h", "gru", bleu=29.9, context="emb+slice", size=20),
        fabricated("revlstm-emb20h", "revlstm", bleu=28.1, context="emb+slice", size=20,
                   memory=memory),
        fabricated("revgru-emb-k1", "revgru", bleu=25.0, context="emb", bits=1, budget="--minutes 20",
                   memory=memory),
        fabricated("gru-short", "gru", bleu=26.5, budget="--minutes 20"),
        fabricated("revgru-noLimit", "revgru", bleu=24.0, context="emb+proj", size=20, bits=None,
                   budget="--minutes 20", memory={"encoder_ratio": float("inf")}),
    ]


def test_table_has_one_row_per_run_with_its_figures():
    rows = {row["model"]: row for row in parse_table(render_results_table(grid_results()))}
    assert len(rows) == 7
    rev = rows["revgru-emb20h"]
    assert rev["cells"] == "revgru/revgru" and rev["attention"] == "Emb+20H" and rev["k"] == "3"
    assert rev["BLEU"] == "29.62" and rev["BLEU lc"] == "31.12" and rev["chrF"] == "54.62"
    # logged before complete accounting (no total_ratio): marked as the old convention
    assert rev["enc ratio (counted / optimal)"] == "11.9 / 14.5°"
    assert rev["dec ratio (counted / optimal)"] == "17.2 / 21.0°"
    assert rev["total ratio (counted / optimal)"] == "–"
    assert rev["bench enc / dec / total (measured)"] == "12.0 / 17.3° (16.6×)"
    assert rows["revlstm-emb20h"]["bench enc / dec / total (measured)"] == "–"
    complete = dict(grid_results()[0], memory={
        "encoder_ratio": 4.3, "encoder_optimal_ratio": 5.2, "decoder_ratio": 6.2,
        "decoder_optimal_ratio": 8.3, "total_ratio": 5.7, "total_optimal_ratio": 6.4},
        bench_memory={"reversible": {"encoder_ratio": 4.4, "decoder_ratio": 6.3,
                                     "total_ratio": 5.8}, "measured_recurrent_ratio": 16.64})
    row = parse_table(render_results_table([complete]))[0]
    assert row["enc ratio (counted / optimal)"] == "4.3 / 5.2"
    assert row["total ratio (counted / optimal)"] == "5.7 / 6.4"
    assert row["bench enc / dec / total (measured)"] == "4.4 / 6.3 / 5.8 (16.6×)"
    assert rev["train tok/s"] == "1,500" and rev["train min"] == "61.2" and rev["epochs"] == "10"
    assert rev["budget"] == "epochs 10" and rev["machine"] == "x86_64, 2 cores"
    threaded = dict(grid_results()[0], machine={"arch": "x86_64", "cores": 2, "torch_threads": 1})
    assert parse_table(render_results_table([threaded]))[0]["machine"] == "x86_64, 2 cores, 1 thread"
    assert rev["commit"] == "`0123456789ab`"
    baseline = rows["gru"]
    assert baseline["k"] == "" and baseline["enc ratio (counted / optimal)"] == "–"
    assert rows["revgru-emb-k1"]["attention"] == "Emb" and rows["revgru-emb-k1"]["k"] == "1"
    assert rows["revgru-noLimit"]["k"] == "none"
    assert rows["revgru-noLimit"]["attention"] == "Emb+proj20"
    every_state = fabricated("revgru-300h", "revgru", bleu=25.0, budget="--minutes 20")
    assert parse_table(render_results_table([every_state]))[0]["attention"] == "300H (every state)"
    assert rows["gru"]["attention"] == "hidden"
    assert rows["revgru-noLimit"]["enc ratio (counted / optimal)"] == "∞ / –°"


def test_bleu_difference_is_against_the_same_cell_and_budget():
    rows = {row["model"]: row for row in parse_table(render_results_table(grid_results()))}
    assert rows["revgru-emb20h"]["Δ base"] == "-0.28"      # 29.62 - gru-emb20h 29.90 (same attention)
    assert rows["revgru-emb-k1"]["Δ base"] == "-1.50"      # 25.0 - gru-short 26.5 (hidden) at --minutes 20
    without_twin = [r for r in grid_results() if r["name"] != "gru-emb20h"]
    rows = {row["model"]: row for row in parse_table(render_results_table(without_twin))}
    assert rows["revgru-emb20h"]["Δ base"] == "-0.38"      # 29.62 - gru 30.00 (hidden)
    assert rows["revlstm-emb20h"]["Δ base"] == ""          # no LSTM baseline in the table
    assert rows["gru"]["Δ base"] == ""


def seeded_results():
    pair = dict(context="emb+slice", size=20)
    return [fabricated("gru-emb20h", "gru", bleu=33.30, **pair),
            fabricated("revgru-emb20h", "revgru", bleu=32.74, **pair),
            fabricated("revgru-emb20h-seed2", "revgru", bleu=33.50, seed=2, **pair),
            fabricated("gru-emb20h-seed2", "gru", bleu=33.10, seed=2, **pair),
            fabricated("revlstm-emb20h-seed2", "revlstm", bleu=32.0, seed=2, **pair),
            fabricated("revlstm-emb20h", "revlstm", bleu=32.5, **pair)]


def test_each_seed_is_compared_with_the_baseline_of_the_same_seed():
    rows = {row["model"]: row for row in parse_table(render_results_table(seeded_results()))}
    assert rows["revgru-emb20h"]["Δ base"] == "-0.56" and rows["revgru-emb20h"]["seed"] == "1"
    assert rows["revgru-emb20h-seed2"]["Δ base"] == "+0.40"   # 33.50 - gru seed 2 33.10
    assert rows["revlstm-emb20h-seed2"]["Δ base"] == ""       # no LSTM run with seed 2
    old = fabricated("gru-emb20h", "gru", bleu=30.0, context="emb+slice", size=20)
    del old["training"]["seed"]                                 # written before seeds were recorded
    assert parse_table(render_results_table([old]))[0]["seed"] == "1"


def test_models_with_several_seeds_get_their_mean():
    text = render_results_table(seeded_results())
    means = parse_table(text.split("## Mean over seeds")[1])
    by_name = {row["model"]: row for row in means}
    assert set(by_name) == {"gru-emb20h", "revgru-emb20h", "revlstm-emb20h"}
    rev = by_name["revgru-emb20h"]
    assert rev["seeds"] == "1, 2" and rev["BLEU per seed"] == "32.74, 33.50"
    assert rev["mean BLEU"] == "33.12" and rev["Δ base per seed"] == "-0.56, +0.40"
    assert rev["mean Δ base"] == "-0.08"
    assert by_name["gru-emb20h"]["mean BLEU"] == "33.20" and by_name["gru-emb20h"]["mean Δ base"] == ""
    assert by_name["revlstm-emb20h"]["Δ base per seed"] == "" and by_name["revlstm-emb20h"]["mean Δ base"] == ""
    order = [row["model"] for row in parse_table(text)]
    assert order == ["gru-emb20h", "gru-emb20h-seed2", "revgru-emb20h", "revgru-emb20h-seed2",
                     "revlstm-emb20h", "revlstm-emb20h-seed2"]
    assert "## Mean over seeds" not in render_results_table(grid_results())


def test_rows_are_grouped_by_budget_baseline_first():
    order = [row["model"] for row in parse_table(render_results_table(grid_results()))]
    assert order == ["gru", "gru-emb20h", "revgru-emb20h", "revlstm-emb20h",
                     "gru-short", "revgru-emb-k1", "revgru-noLimit"]


def test_table_states_signatures_and_how_to_reproduce_each_row():
    text = render_results_table(grid_results())
    assert f"`{BLEU_SIG}`" in text and f"`{BLEU_LC_SIG}`" in text
    for result in grid_results():
        assert f"bash recipes/multi30k/run.sh {result['config']} {result['budget']}\n" in text
    assert "No results yet" in render_results_table([])


def test_other_language_pairs_are_labelled():
    rows = parse_table(render_results_table([fabricated("gru-en-fr", "gru", bleu=50.0, pair="en-fr")]))
    assert rows[0]["cells"] == "gru/gru en-fr"


def write_run(run_dir: Path, records):
    run_dir.mkdir(parents=True)
    config = {"name": "toy", "data": {"src": "en", "tgt": "fr", "test": "test_2016_flickr"},
              "model": {"encoder": {"cell": "revgru", "hidden": 300, "layers": 1, "max_forget_bits": 3},
                        "decoder": {"cell": "revgru"},
                        "attention": {"context": "emb+slice", "size": 20, "precision": 16}},
              "train": {"max_epochs": 4, "max_minutes": None}}
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))


TRAIN_RECORDS = [
    {"event": "train", "step": 50, "epoch": 1, "tokens": 1000, "tokens_per_sec": 500.0,
     "memory/encoder_ratio": 10.0, "memory/decoder_ratio": 16.0},
    {"event": "train", "step": 100, "epoch": 1, "tokens": 3000, "tokens_per_sec": 1000.0,
     "memory/encoder_ratio": 12.0, "memory/decoder_ratio": 14.0},
    {"event": "valid", "step": 100, "epoch": 1, "bleu": 20.0, "loss": 3.0},
]


def test_throughput_is_total_tokens_over_total_seconds():
    # 4000 tokens in 2 s + 3 s; a mean of the two rates (750) would be wrong
    assert training_throughput(TRAIN_RECORDS) == pytest.approx(800.0)
    assert training_throughput([]) is None


def test_memory_figures_are_means_of_the_logged_steps():
    assert mean_memory_figures(TRAIN_RECORDS) == {"encoder_ratio": 11.0, "decoder_ratio": 15.0}


def _memory_record(step, epoch, ratio):
    return {"event": "train", "step": step, "epoch": epoch, "tokens": 10, "tokens_per_sec": 10.0,
            "memory/encoder_ratio": ratio}


def test_best_checkpoint_figures_describe_the_model_the_bench_measures():
    growing = [_memory_record(10, 1, 50.0), _memory_record(20, 1, 60.0),
               _memory_record(30, 2, 80.0), _memory_record(40, 2, 90.0),
               _memory_record(50, 2, 100.0), {"event": "train", "step": 60, "epoch": 3}]
    assert best_checkpoint_memory_figures(growing) == {"encoder_ratio": 90.0}
    assert mean_memory_figures(growing) == {"encoder_ratio": 76.0}
    # an epoch with fewer than 3 logged steps up to the best step takes the one before too
    stopped = growing + [_memory_record(70, 3, 120.0), _memory_record(80, 3, 130.0),
                         _memory_record(90, 3, 140.0)]
    assert best_checkpoint_memory_figures(stopped) == {"encoder_ratio": 130.0}
    assert best_checkpoint_memory_figures(stopped, best_step=70) == {"encoder_ratio": 97.5}
    assert best_checkpoint_memory_figures(stopped, best_step=40) == {"encoder_ratio": 70.0}
    assert best_checkpoint_memory_figures([{"event": "train", "epoch": 1}]) == {}


def test_collect_reads_the_run_directory(tmp_path):
    summary = {"event": "summary", "stop_reason": "max_epochs", "steps": 100, "epochs_completed": 4,
               "wall_minutes": 3.5, "best_bleu": 20.0}
    write_run(tmp_path / "run", TRAIN_RECORDS + [summary])
    cased = {"bleu": 21.0, "chrf": 50.0, "bleu_signature": BLEU_SIG, "chrf_signature": CHRF_SIG,
             "num_sentences": 1000}
    lowercased = dict(cased, bleu=22.0, bleu_signature=BLEU_LC_SIG)
    results = collect_run_results(tmp_path / "run", cased=cased, lowercased=lowercased, beam_size=5,
                                  wall_seconds=300.0, budget="--epochs 4", commit="abc")
    assert results["test"]["cased"]["bleu"] == 21.0 and results["test"]["lowercased"]["bleu"] == 22.0
    assert results["training"]["epochs"] == 4 and results["training"]["stop_reason"] == "max_epochs"
    assert results["training"]["tokens_per_sec"] == pytest.approx(800.0)
    assert results["memory"] == {"encoder_ratio": 11.0, "decoder_ratio": 15.0}
    assert results["memory_best"] == {"encoder_ratio": 11.0, "decoder_ratio": 15.0}
    assert results["model"]["context"] == "emb+slice" and results["model"]["precision"] == 16
    assert results["language_pair"] == "en-fr" and results["budget"] == "--epochs 4"
    assert results["machine"]["cores"] >= 1 and results["machine"]["arch"]
    assert results["machine"]["torch_threads"] == torch.get_num_threads()
    row = parse_table(render_results_table([results]))[0]
    assert row["attention"] == "Emb+20H (16-bit)" and row["enc ratio (counted / optimal)"] == "11.0 / –°"


def test_readout_dropout_is_recorded_and_older_reversible_runs_count_as_sequence(tmp_path):
    summary = {"event": "summary", "stop_reason": "max_epochs", "steps": 100, "epochs_completed": 4,
               "wall_minutes": 3.5, "best_bleu": 20.0}
    write_run(tmp_path / "run", TRAIN_RECORDS + [summary])
    config = yaml.safe_load((tmp_path / "run" / "config.yaml").read_text())
    config["model"]["readout_dropout"] = "step"
    (tmp_path / "run" / "config.yaml").write_text(yaml.safe_dump(config))
    scores = {"bleu": 21.0, "chrf": 50.0, "bleu_signature": BLEU_SIG, "chrf_signature": CHRF_SIG}
    recorded = collect_run_results(tmp_path / "run", cased=scores, lowercased=scores, beam_size=5,
                                   wall_seconds=1.0, budget="--epochs 4", commit="abc")
    assert recorded["model"]["readout_dropout"] == "step"
    older = fabricated("revgru-emb20h", "revgru", bleu=29.0)  # written before the setting existed
    plain = fabricated("gru", "gru", bleu=30.0)
    rows = parse_table(render_results_table([dict(recorded, name="new"), older, plain]))
    dropout = {row["model"]: row["readout dropout"] for row in rows}
    assert dropout == {"new": "step", "revgru-emb20h": "sequence", "gru": "step"}


def test_collect_without_summary_names_the_file(tmp_path):
    write_run(tmp_path / "run", TRAIN_RECORDS)
    with pytest.raises(UserError, match="metrics.jsonl: no summary record"):
        collect_run_results(tmp_path / "run", cased={}, lowercased={}, beam_size=5,
                            wall_seconds=1.0, budget="config", commit=None)


def make_results(*args, cwd=REPO):
    return subprocess.run([sys.executable, str(MAKE_RESULTS), *map(str, args)], cwd=cwd,
                          capture_output=True, text=True)


def test_table_command_writes_results_md_from_files_and_run_dirs(tmp_path):
    paths = []
    for result in grid_results()[:2]:  # revgru-emb20h, gru
        run_dir = tmp_path / result["name"]
        run_dir.mkdir()
        (run_dir / "results.json").write_text(json.dumps(result))
        paths.append(run_dir)
    paths[1] = paths[1] / "results.json"
    done = make_results("table", "--output", tmp_path / "RESULTS.md", *paths)
    assert done.returncode == 0, done.stderr
    rows = parse_table((tmp_path / "RESULTS.md").read_text())
    assert [row["model"] for row in rows] == ["gru", "revgru-emb20h"]


def test_table_command_bad_results_file_is_one_line(tmp_path):
    (tmp_path / "broken.json").write_text('{"name": "x",\n  "test": }')
    done = make_results("table", tmp_path / "broken.json")
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "broken.json line 2" in done.stderr
    incomplete = fabricated("gru", "gru", bleu=1.0)
    del incomplete["memory"]
    (tmp_path / "incomplete.json").write_text(json.dumps(incomplete))
    done = make_results("table", tmp_path / "incomplete.json")
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "'memory'" in done.stderr
    with pytest.raises(UserError, match="no such file"):
        load_results([tmp_path / "missing.json"])


def test_describe_gives_run_dir_reference_and_whether_reversible(tmp_path):
    from recipe_toy import write_recipe_config, write_toy_multi30k

    data_dir = write_toy_multi30k(tmp_path / "multi30k")
    plain = write_recipe_config(tmp_path, name="plain")
    reversible = yaml.safe_load(plain.read_text())
    reversible["name"] = "rev"
    reversible["run_dir"] = str(tmp_path / "runs dir" / "it's rev")  # quoted for the shell
    reversible["model"]["decoder"]["cell"] = "revgru"  # a reversible decoder alone counts
    (tmp_path / "rev.yaml").write_text(yaml.safe_dump(reversible))
    env_config = {"MULTI30K_DIR": str(data_dir)}
    described = {}
    for name in ("plain", "rev"):
        done = subprocess.run(["bash", "-c", 'eval "$("$0" "$1" describe "$2")"; '
                               'printf "%s\\n" "$NAME" "$RUN_DIR" "$TEST_REF" "$REVERSIBLE"',
                               sys.executable, str(MAKE_RESULTS), str(tmp_path / f"{name}.yaml")],
                              capture_output=True, text=True, env={**os.environ, **env_config})
        assert done.returncode == 0, done.stderr
        described[name] = done.stdout.splitlines()
    assert described["plain"] == ["plain", str(tmp_path / "runs" / "plain"),
                                  str(data_dir / "test_2016_flickr.de.gz"), "0"]
    assert described["rev"] == ["rev", str(tmp_path / "runs dir" / "it's rev"),
                                str(data_dir / "test_2016_flickr.de.gz"), "1"]


def test_commit_is_dirty_only_for_changes_outside_the_recipe_outputs(tmp_path):
    from nmt.results import git_commit

    def git(*args):
        subprocess.run(["git", *args], cwd=tmp_path, check=True, capture_output=True)

    git("init", "-q")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "a.json").write_text("{}")
    (tmp_path / "RESULTS.md").write_text("table")
    (tmp_path / "code.py").write_text("x = 1")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init")
    outputs = ("RESULTS.md", "results")
    clean = git_commit(tmp_path, outputs=outputs)
    assert clean and not clean.endswith("+dirty")
    (tmp_path / "RESULTS.md").write_text("a new table")
    (tmp_path / "results" / "a.json").write_text('{"new": 1}')
    assert git_commit(tmp_path, outputs=outputs) == clean
    (tmp_path / "code.py").write_text("x = 2")
    assert git_commit(tmp_path, outputs=outputs) == clean + "+dirty"
    assert git_commit(tmp_path) == clean + "+dirty"
