"""recipes/multi30k/run.sh and grid.sh end to end on a tiny dataset laid out like Multi30K."""
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import sacrebleu
import yaml

from recipe_toy import write_recipe_config, write_toy_multi30k

REPO = Path(__file__).resolve().parents[2]
RUN_SH = REPO / "recipes" / "multi30k" / "run.sh"
GRID_SH = REPO / "recipes" / "multi30k" / "grid.sh"
CHECK_TENSORBOARD = REPO / "recipes" / "check_tensorboard.py"


def bash(script, *args, data_dir, cwd=REPO, **extra_env):
    env = dict(os.environ, MULTI30K_DIR=str(data_dir), OMP_NUM_THREADS="1")
    env.update(extra_env)
    return subprocess.run(["bash", str(script), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=600)


def read_gz_lines(path):
    with gzip.open(path, "rt", encoding="utf-8") as stream:
        return stream.read().splitlines()


def test_run_sh_trains_within_the_epoch_budget_and_writes_results(tmp_path):
    data_dir = write_toy_multi30k(tmp_path / "multi30k")
    config = write_recipe_config(tmp_path)
    config_text = config.read_text()
    done = bash(RUN_SH, config, "--epochs", 2, data_dir=data_dir)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "toy-recipe"
    results = json.loads((run_dir / "results.json").read_text())

    # the budget replaced the config's 50 epochs / 60 minutes without editing the file
    assert config.read_text() == config_text
    used = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]
    assert used["max_epochs"] == 2 and used["max_minutes"] is None
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert records[-1]["event"] == "summary" and records[-1]["epochs_completed"] == 2
    assert results["training"]["epochs"] == 2 and results["training"]["stop_reason"] == "max_epochs"
    assert results["budget"] == "--epochs 2"

    # scores: sacreBLEU on the saved test translations, cased and lowercased, against the reference
    hypotheses = (run_dir / "test.hyp").read_text(encoding="utf-8").splitlines()
    references = read_gz_lines(data_dir / "test_2016_flickr.de.gz")
    assert len(hypotheses) == len(references) == results["test"]["cased"]["num_sentences"]
    cased = results["test"]["cased"]
    lowercased = results["test"]["lowercased"]
    assert cased["bleu"] == pytest.approx(sacrebleu.corpus_bleu(hypotheses, [references]).score)
    assert cased["chrf"] == pytest.approx(sacrebleu.corpus_chrf(hypotheses, [references]).score)
    assert lowercased["chrf"] == pytest.approx(
        sacrebleu.CHRF(lowercase=True).corpus_score(hypotheses, [references]).score)
    assert lowercased["chrf"] != pytest.approx(cased["chrf"])  # capitalised references
    assert "case:mixed" in cased["bleu_signature"] and "case:lc" in lowercased["bleu_signature"]
    assert results["test"]["beam_size"] == 5 and results["test"]["split"] == "test_2016_flickr"

    # training speed from the logged windows; where and how it ran
    train = [r for r in records if r["event"] == "train"]
    tokens = sum(r["tokens"] for r in train)
    seconds = sum(r["tokens"] / r["tokens_per_sec"] for r in train)
    assert results["training"]["tokens_per_sec"] == pytest.approx(tokens / seconds)
    assert results["machine"]["cores"] == os.cpu_count()
    assert results["machine"]["arch"] == subprocess.run(["uname", "-m"], capture_output=True,
                                                        text=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=REPO, capture_output=True,
                          text=True).stdout.strip()
    assert results["commit"].startswith(head)
    assert (run_dir / "recipe_commit").read_text().strip() == results["commit"]  # taken at the start
    assert results["memory"] == {} and results["wall_seconds"] > 0

    assert f"BLEU {cased['bleu']:.2f}" in done.stdout and "lowercased BLEU" in done.stdout
    # the printed logdir is the runs folder, so the run is listed by its name, not as "."
    assert f"tensorboard --logdir {run_dir.parent} --host 127.0.0.1" in done.stdout

    # the printed TensorBoard logdir serves the run's curves (check_tensorboard starts and stops it)
    served = subprocess.run([sys.executable, str(CHECK_TENSORBOARD), "--logdir", run_dir.parent,
                             "--tags", "train/loss,valid/bleu", "--timeout", "120"],
                            capture_output=True, text=True, timeout=300)
    assert served.returncode == 0, served.stdout + served.stderr
    assert "ok run toy-recipe/tensorboard tag valid/bleu: 2 logged steps" in served.stdout


@pytest.mark.parametrize("args, message", [
    (["--epochs", "2", "--minutes", "3"], "either --minutes or --epochs"),
    (["--minutes", "soon"], "--minutes needs a positive number"),
    (["--speed", "9"], "unknown option --speed"),
])
def test_run_sh_bad_arguments_are_one_line(tmp_path, args, message):
    config = write_recipe_config(tmp_path)
    done = bash(RUN_SH, config, *args, data_dir=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and message in done.stderr
    assert not (tmp_path / "runs").exists()


def test_run_sh_missing_config_is_one_line(tmp_path):
    done = bash(RUN_SH, tmp_path / "nope.yaml", data_dir=tmp_path)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "nope.yaml" in done.stderr


def test_run_sh_without_data_and_network_says_what_to_set(tmp_path):
    config = write_recipe_config(tmp_path)
    closed_port = "http://127.0.0.1:9"  # every download fails at once, networked machine or not
    done = bash(RUN_SH, config, data_dir=tmp_path / "empty", https_proxy=closed_port,
                HTTPS_PROXY=closed_port)
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert "set MULTI30K_DIR" in done.stderr and "prepare" not in done.stdout
    assert not (tmp_path / "runs").exists()


def test_run_sh_without_the_test_reference_stops_before_training(tmp_path):
    data_dir = write_toy_multi30k(tmp_path / "multi30k")
    (data_dir / "test_2016_flickr.de.gz").unlink()
    done = bash(RUN_SH, write_recipe_config(tmp_path), data_dir=data_dir)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "data.test" in done.stderr
    assert not (tmp_path / "runs").exists()


def test_grid_sh_runs_each_config_and_regenerates_the_table(tmp_path):
    """A reversible model: memory ratios logged in training and the memory bench reach the table."""
    data_dir = write_toy_multi30k(tmp_path / "multi30k")
    config = write_recipe_config(tmp_path, name="toy-grid", cell="revgru", max_epochs=1)
    results_md = tmp_path / "RESULTS.md"
    # run from tmp_path: the default grid configs' run_dirs (runs/...) have no results there
    done = bash(GRID_SH, "--minutes", "5", "--results", results_md, config, data_dir=data_dir,
                cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-3000:]
    run_dir = tmp_path / "runs" / "toy-grid"
    results = json.loads((run_dir / "results.json").read_text())
    assert results["budget"] == "--minutes 5"
    used = yaml.safe_load((run_dir / "config.yaml").read_text())["train"]
    assert used["max_minutes"] == 5 and used["max_epochs"] == 1  # the config's epochs still apply

    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    logged = [r["memory/encoder_ratio"] for r in records if r["event"] == "train"]
    assert len(logged) >= 2 and results["memory"]["encoder_ratio"] == pytest.approx(sum(logged) / len(logged))
    bench = results["bench_memory"]
    assert bench["checkpoint"] == str(run_dir / "best.pt") and bench["reversible"]["encoder_ratio"] > 1
    assert f"encoder_ratio {results['memory']['encoder_ratio']:.2f}" in done.stdout

    table = results_md.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| toy-grid |")]
    assert len(rows) == 1 and f"| {results['test']['cased']['bleu']:.2f} |" in rows[0]
    memory = results["memory"]
    assert (f"| {memory['encoder_ratio']:.1f} / {memory['encoder_optimal_ratio']:.1f} "
            f"| {memory['decoder_ratio']:.1f} / {memory['decoder_optimal_ratio']:.1f} "
            f"| {memory['total_ratio']:.1f} / {memory['total_optimal_ratio']:.1f} "
            f"| {bench['reversible']['encoder_ratio']:.1f} / {bench['reversible']['decoder_ratio']:.1f} "
            f"/ {bench['reversible']['total_ratio']:.1f} ") in rows[0]
    assert "| revgru/revgru | Emb+4H | 3 |" in rows[0] and "| minutes 5 |" in rows[0]
    assert (tmp_path / "runs" / "grid-logs" / "toy-grid.log").read_text().count("== results") == 1
    # the table's source is kept beside it, named by config and budget, to be committed
    kept = tmp_path / "results" / "toy-grid.minutes5.json"
    assert json.loads(kept.read_text()) == results

    again = bash(GRID_SH, "--epochs", "1", "--results", results_md, config, data_dir=data_dir,
                 cwd=tmp_path)  # a finished run is skipped, the table stays
    assert again.returncode == 0 and "=== skip" in again.stdout and results_md.read_text() == table

    # an interrupted run (checkpoints, no results.json) is resumed, and its earlier time counted
    (run_dir / "results.json").unlink()
    resumed = bash(GRID_SH, "--epochs", "1", "--results", results_md, config, data_dir=data_dir,
                   cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming the interrupted run in" in resumed.stdout
    assert "toy-grid (earlier attempts: " in resumed.stdout
    assert "resumed from" in resumed.stdout
    again_results = json.loads((run_dir / "results.json").read_text())
    assert again_results["training"]["epochs"] == 1  # nothing trained twice
    assert again_results["wall_seconds"] > results["wall_seconds"]
    assert json.loads((tmp_path / "results" / "toy-grid.epochs1.json").read_text()) == again_results
    rows = [line for line in results_md.read_text().splitlines() if line.startswith("| toy-grid |")]
    assert len(rows) == 2  # one per budget: the kept first run and the resumed one


def test_grid_sh_runs_configs_side_by_side_with_jobs(tmp_path):
    data_dir = write_toy_multi30k(tmp_path / "multi30k")
    first = write_recipe_config(tmp_path, name="toy-a", max_epochs=1)
    second = write_recipe_config(tmp_path, name="toy-b", max_epochs=1, seed=2)
    results_md = tmp_path / "RESULTS.md"
    done = bash(GRID_SH, "--jobs", "2", "--epochs", "1", "--results", results_md, first, second,
                data_dir=data_dir, cwd=tmp_path, OMP_NUM_THREADS="")  # grid.sh picks the threads
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [line for line in done.stdout.splitlines() if line.startswith("===")]
    started = [i for i, line in enumerate(lines) if "; log: " in line]
    finished = [i for i, line in enumerate(lines) if line.endswith(" done")]
    assert len(started) == len(finished) == 2 and max(started) < min(finished)  # side by side
    threads = max(1, len(os.sched_getaffinity(0)) // 2)
    for name in ("toy-a", "toy-b"):
        results = json.loads((tmp_path / "runs" / name / "results.json").read_text())
        assert results["machine"]["torch_threads"] == threads
        assert json.loads((tmp_path / "results" / f"{name}.epochs1.json").read_text()) == results
        log = (tmp_path / "runs" / "grid-logs" / f"{name}.log").read_text()
        assert log.count("== results") == 1 and f"{name}: test_2016_flickr beam 5" in log
    rows = [line for line in results_md.read_text().splitlines() if line.startswith("| toy-")]
    assert len(rows) == 2


@pytest.mark.parametrize("jobs", ["0", "two"])
def test_grid_sh_bad_jobs_is_one_line(tmp_path, jobs):
    done = bash(GRID_SH, "--jobs", jobs, data_dir=tmp_path)
    assert done.returncode == 2 and "--jobs needs a positive whole number" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
