"""`sdeplug evaluate`: metrics over seeds with the scale beside them, and the order that
real data, a barely trained model and noise must come in."""

from __future__ import annotations

import json

import pytest
import torch

import sdeplug
from sdeplug.app.evaluate import extrapolated_fid
from sdeplug.metrics import FeatureStats, fid
from sdeplug_cli import main

pytestmark = pytest.mark.xdist_group("evaluate")

RING = """
[sde]
name = "vp"
[data]
name = "ring8"
[model]
name = "oracle"
[sampler]
kind = "ode"
[sampler.solver]
name = "dopri5"
rtol = 1e-4
atol = 1e-4
[evaluate]
num = 300
seeds = [0, 1]
extrapolate = true
[output]
dir = "{out}"
"""


@pytest.mark.slow
def test_evaluate_reports_each_metric_per_seed_with_the_scale_beside_it(tmp_path, capsys):
    config = tmp_path / "ring.toml"
    config.write_text(RING.format(out=tmp_path / "run"))
    assert main(["evaluate", str(config), "--no-progress"]) == 0
    report = json.loads((tmp_path / "run" / "evaluate.json").read_text())
    assert report["seeds"] == [0, 1] and report["features"] == {"name": "pixels", "event_shape": [2]}
    assert report["comparable_with_published"] is False
    for key in ("fid", "fid_infinity", "kid", "precision", "recall"):
        row = report["metrics"][key]
        assert len(row["per_seed"]) == 2 and row["mean"] == pytest.approx(sum(row["per_seed"]) / 2)
    # exact samples of the mixture lie on it: precision far above that of uniform noise
    assert report["metrics"]["precision"]["mean"] > 0.9 > 0.5 > report["uniform_noise"]["precision"]
    assert "warning" not in capsys.readouterr().err  # 300 samples are plenty for 2-D features
    assert (tmp_path / "run" / "reference-stats-test.safetensors").exists()
    assert main(["evaluate", str(config), "--no-progress", "--num", "15"]) == 0
    assert "warning: FID from 15 samples of 2-dimensional features is biased upward" in capsys.readouterr().err


@pytest.mark.slow
def test_the_same_config_gives_the_same_numbers(tmp_path):
    config = tmp_path / "ring.toml"
    config.write_text(RING.format(out=tmp_path / "run"))
    reports = []
    for _ in range(2):
        assert main(["evaluate", str(config), "--no-progress", "--seed", "3"]) == 0
        reports.append(json.loads((tmp_path / "run" / "evaluate.json").read_text()))
    assert reports[0]["metrics"] == reports[1]["metrics"] and reports[0]["seeds"] == [3]


def test_fid_infinity_is_the_intercept_of_the_least_squares_line_of_fid_against_one_over_n():
    """Against numpy's own least-squares fit on the nested subsets of n/8 to n samples (float64,
    four well-separated points: both agree to rounding); fewer than two subset sizes give FID itself."""
    np = pytest.importorskip("numpy")
    g = torch.Generator().manual_seed(0)
    features = torch.randn(400, 3, generator=g, dtype=torch.float64)
    stats = FeatureStats.of(torch.randn(1000, 3, generator=g, dtype=torch.float64) + 0.3)
    sizes = [50, 100, 200, 400]
    values = [fid(FeatureStats.of(features[:m]), stats) for m in sizes]
    expected = np.polyfit(1 / np.array(sizes, dtype=np.float64), values, 1)[1]
    assert extrapolated_fid(features, stats) == pytest.approx(expected, rel=1e-12, abs=1e-12)
    assert extrapolated_fid(features[:3], stats) == fid(FeatureStats.of(features[:3]), stats)


def test_inception_score_needs_class_probabilities(tmp_path, capsys):
    config = tmp_path / "ring.toml"
    config.write_text(RING.format(out=tmp_path / "run").replace("extrapolate = true", 'metrics = ["inception_score"]'))
    assert main(["evaluate", str(config), "--no-progress"]) == 2
    assert "'inception_score', which needs class probabilities" in capsys.readouterr().err


SWEEP = """
[sweep]
nfe = [4, 8]
[[sweep.sampler]]
label = "UniPC"
kind = "pc"
denoise = false
grid = "logsnr"
predictor = "unipc"
corrector = "none"
[[sweep.sampler]]
label = "Euler-Maruyama"
kind = "pc"
predictor = "euler_maruyama"
corrector = "none"
"""


@pytest.mark.slow
def test_a_sweep_runs_every_sampler_at_every_budget_and_writes_a_table_and_a_plot(tmp_path, capsys):
    config, sweep = tmp_path / "ring.toml", tmp_path / "sweep.toml"
    config.write_text(RING.format(out=tmp_path / "run").replace("seeds = [0, 1]", "seeds = [0]"))
    sweep.write_text(SWEEP)
    assert main(["evaluate", str(config), "--sweep", str(sweep), "--no-progress"]) == 0
    report = json.loads((tmp_path / "run" / "sweep.json").read_text())
    assert [(r["label"], r["budget"]) for r in report["sweep"]] == [
        ("UniPC", 4),
        ("UniPC", 8),
        ("Euler-Maruyama", 4),
        ("Euler-Maruyama", 8),
    ]
    assert all(row["nfe"] <= row["budget"] for row in report["sweep"])
    assert [r["nfe"] for r in report["sweep"][:2]] == [4, 8]  # UniPC: one evaluation per step, no denoising
    assert (tmp_path / "run" / "sweep.png").stat().st_size > 0
    assert "| UniPC | 8 | 8 | 8 |" in (tmp_path / "run" / "sweep.md").read_text()
    assert "| Euler-Maruyama | 4 | 3 | 4 |" in capsys.readouterr().out  # 3 steps and the denoising step


def test_a_bad_sweep_file_is_refused_in_one_line(tmp_path, capsys):
    config, sweep = tmp_path / "ring.toml", tmp_path / "sweep.toml"
    config.write_text(RING.format(out=tmp_path / "run"))
    sweep.write_text(SWEEP.replace("nfe = [4, 8]", "nfe = [0]"))
    assert main(["evaluate", str(config), "--sweep", str(sweep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nfe must be a non-empty list of positive integers; got [0]" in err[0]
    sweep.write_text(SWEEP.replace('label = "UniPC"\n', 'label = "UniPC"\nsteps = 3\n'))
    assert main(["evaluate", str(config), "--sweep", str(sweep)]) == 2
    assert "steps follow from [sweep] nfe; remove steps" in capsys.readouterr().err
    sweep.write_text(SWEEP.replace("nfe = [4, 8]", "nfe = [true, 3]"))  # true is not the budget 1
    assert main(["evaluate", str(config), "--sweep", str(sweep)]) == 2
    assert "nfe must be a non-empty list of positive integers; got [True, 3]" in capsys.readouterr().err
    sweep.write_text(SWEEP.replace('label = "Euler-Maruyama"', 'label = "UniPC"'))
    assert main(["evaluate", str(config), "--sweep", str(sweep)]) == 2
    assert "two samplers are labelled 'UniPC'" in capsys.readouterr().err


def test_evaluate_refuses_too_few_samples_before_sampling(tmp_path, capsys):
    config = tmp_path / "ring.toml"
    config.write_text(RING.format(out=tmp_path / "run"))
    assert main(["evaluate", str(config), "--num", "1", "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--num: num must be at least 2 samples per seed" in err[0], err
    assert not (tmp_path / "run").exists()  # refused before anything was sampled or written


def test_inception_without_its_weights_file_is_refused_naming_the_file(tmp_path, capsys):
    config = tmp_path / "ring.toml"
    config.write_text(RING.format(out=tmp_path / "run") + '\n[evaluate.features]\nname = "inception"\n')
    assert main(["evaluate", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "'inception' needs its weights file" in err and "pt_inception-2015-12-05-6726825d.pth" in err


@pytest.mark.slow
def test_stored_reference_statistics_are_used_and_refused_when_made_with_other_features(tmp_path, capsys):
    config = tmp_path / "ring.toml"
    config.write_text(RING.format(out=tmp_path / "run").replace("seeds = [0, 1]", "seeds = [0]"))
    assert main(["evaluate", str(config), "--no-progress"]) == 0
    first = json.loads((tmp_path / "run" / "evaluate.json").read_text())
    stored = tmp_path / "run" / "reference-stats-test.safetensors"
    text = config.read_text().replace("extrapolate = true", f'extrapolate = true\nreference_stats = "{stored}"')
    config.write_text(text)
    capsys.readouterr()
    assert main(["evaluate", str(config), "--no-progress"]) == 0
    assert capsys.readouterr().err == ""  # the same data: nothing to say
    again = json.loads((tmp_path / "run" / "evaluate.json").read_text())
    assert again["metrics"]["fid"] == first["metrics"]["fid"] and again["reference"]["stats_file"] == str(stored)
    # the same statistics used on other data: said in one line
    config.write_text(text.replace('name = "ring8"', 'name = "ring8_tight"'))
    assert main(["evaluate", str(config), "--no-progress", "--seed", "0"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sdeplug: warning: [evaluate] reference_stats"), err
    assert "ring8_tight" in err[0]
    config.write_text(text)
    # statistics of other features: the data classifier's (its identity differs)
    from sdeplug.metrics import save_stats

    other = sdeplug.create("feature_extractor", "data_classifier", event_shape=(2,)).identity()
    save_stats(stored, FeatureStats.of(torch.randn(10, 2, dtype=torch.float64)), extractor=other, data={})
    capsys.readouterr()
    assert main(["evaluate", str(config), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "were computed with other features" in err[0]


@pytest.mark.slow
def test_a_sweep_sampler_with_tune_gets_a_grid_tuned_at_each_budget(tmp_path):
    config, sweep = tmp_path / "ring.toml", tmp_path / "sweep.toml"
    config.write_text(RING.format(out=tmp_path / "run").replace("seeds = [0, 1]", "seeds = [0]"))
    tuned = SWEEP.split('[[sweep.sampler]]\nlabel = "Euler')[0].replace(
        'label = "UniPC"', 'label = "UniPC"\ntune = true\npilot = 64'
    )
    sweep.write_text(tuned)
    assert main(["evaluate", str(config), "--sweep", str(sweep), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "run" / "sweep.json").read_text())["sweep"]
    assert [r["budget"] for r in rows] == [4, 8] and [r["nfe"] for r in rows] == [4, 8]
    for row in rows:
        tuning = row["tuning"]
        assert tuning["start"] == "logsnr" and tuning["pilot_samples"] == 64 and tuning["score_evaluations"] > 0
        assert tuning["validation_error_tuned"] <= tuning["validation_error_start"]


def test_tune_is_refused_for_a_sampler_that_draws_noise_or_corrects(tmp_path, capsys):
    config, sweep = tmp_path / "ring.toml", tmp_path / "sweep.toml"
    config.write_text(RING.format(out=tmp_path / "run"))
    sweep.write_text(SWEEP.replace('label = "UniPC"', 'label = "UniPC"\ntune = "yes"'))
    assert main(["evaluate", str(config), "--sweep", str(sweep)]) == 2
    assert "tune must be true or false" in capsys.readouterr().err
    sweep.write_text(
        SWEEP.replace('label = "UniPC"\n', 'label = "UniPC"\ntune = true\n').replace(
            'predictor = "unipc"\ncorrector = "none"', 'predictor = "unipc"\ncorrector = "langevin"'
        )
    )
    assert main(["evaluate", str(config), "--sweep", str(sweep)]) == 2
    assert "tune = true needs kind = 'pc' and corrector = 'none'" in capsys.readouterr().err


@pytest.mark.slow
def test_a_tuned_sweep_sampler_keeps_its_grid_beyond_tune_max_steps(tmp_path):
    config, sweep = tmp_path / "ring.toml", tmp_path / "sweep.toml"
    config.write_text(RING.format(out=tmp_path / "run").replace("seeds = [0, 1]", "seeds = [0]"))
    tuned = SWEEP.split('[[sweep.sampler]]\nlabel = "Euler')[0]
    sweep.write_text(tuned.replace('label = "UniPC"', 'label = "UniPC"\ntune = true\npilot = 32\ntune_max_steps = 4'))
    assert main(["evaluate", str(config), "--sweep", str(sweep), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "run" / "sweep.json").read_text())["sweep"]
    assert rows[0]["tuning"]["pilot_samples"] == 32
    assert rows[1]["tuning"] == {"skipped": "8 steps > tune_max_steps = 4"}


@pytest.mark.slow
def test_a_sweep_sampler_with_a_free_step_spends_the_budget_on_the_others(tmp_path, capsys):
    """gaussian_start's first step costs no evaluation: free_steps = 1 adds it to the steps,
    so each run spends its whole budget; a negative free_steps is refused in one line."""
    config, sweep = tmp_path / "ring.toml", tmp_path / "sweep.toml"
    config.write_text(RING.format(out=tmp_path / "run").replace("seeds = [0, 1]", "seeds = [0]"))
    free = SWEEP.split('[[sweep.sampler]]\nlabel = "Euler')[0].replace(
        'label = "UniPC"', 'label = "free step + UniPC"\nfree_steps = 1'
    )
    sweep.write_text(free.replace('predictor = "unipc"', 'predictor = "gaussian_start"'))
    assert main(["evaluate", str(config), "--sweep", str(sweep), "--no-progress"]) == 0
    rows = json.loads((tmp_path / "run" / "sweep.json").read_text())["sweep"]
    assert [(r["budget"], r["steps"], r["nfe"]) for r in rows] == [(4, 5, 4), (8, 9, 8)]
    sweep.write_text(free.replace("free_steps = 1", "free_steps = -1"))
    capsys.readouterr()
    assert main(["evaluate", str(config), "--sweep", str(sweep)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "free_steps must be an integer >= 0; got -1" in err[0]


def test_the_sweep_figure_has_one_legend_plain_log_ticks_and_no_error_bar_below_zero(monkeypatch):
    """Readable at a glance: budgets as plain tick labels (no 3x10^1 running into 4x10^1), one
    legend for the figure, and a spread wider than the mean not drawn below zero."""
    from sdeplug.app import plotting

    shown = {}
    monkeypatch.setattr(plotting, "_save", lambda fig, path: shown.setdefault("fig", fig))
    monkeypatch.setattr(plotting.plt, "close", lambda fig: None)
    rows = [
        {
            "label": label,
            "nfe": nfe,
            "seconds": 0.01 * nfe,
            "metrics": {"fid": {"mean": 300 / nfe + k, "std": 2.0}, "kid": {"mean": 0.5 / nfe, "std": 0.05}},
        }
        for k, label in enumerate(("UniPC", "Euler"))
        for nfe in (10, 20, 30, 40, 50, 100)
    ]
    plotting.sweep_plot(rows, ["fid", "kid"], {"fid": 1.0}, "unused.png", "a sweep")
    fig = shown["fig"]
    fig.canvas.draw()
    assert len(fig.legends) == 1 and all(ax.get_legend() is None for ax in fig.axes)
    budgets = [t.get_text() for t in fig.axes[0].get_xticklabels() if t.get_text()]
    assert budgets == ["10", "20", "30", "40", "50", "100"]
    for ax in fig.axes:
        for line in ax.collections:  # the error bars
            for segment in line.get_segments():
                assert min(y for _, y in segment) > 0
