"""benchmarks.paper_grid (the experiments) and benchmarks.paper_tables (their assembly beside the
paper's figures) on a fixture of `dvc exp show --json` in DVC 3's layout."""
import json
import math
from pathlib import Path

import pytest

from benchmarks import paper_grid, paper_tables
from stages.common.params import apply_overrides, load_params
from stages.profile import profile_params

FIXTURE = Path(__file__).with_name("exp_show_fixture.json")


@pytest.fixture
def metrics():
    return paper_tables.experiment_metrics(json.loads(FIXTURE.read_text()))


def test_metrics_are_found_by_experiment_name_and_failed_runs_are_absent(metrics):
    assert {"t1-direct6dof", "t1-direct6dof-cc", "t1-mse-pnp", "t1-gnll-pnp", "t3-epro"} <= set(metrics)
    assert "t2-direct3d" not in metrics
    assert metrics["t1-mse-pnp"]["val"]["ADD"] == 16.8 and metrics["t1-mse-pnp"]["test"]["ADD"] == 17.8


def test_a_running_experiment_shows_no_metrics():
    """DVC lists a running queued experiment with its workspace's metrics (here the baseline's)."""
    running = {"rev": "5347c1fe", "name": "t1-mse-pnp", "error": None, "experiments": None,
               "data": {"rev": "workspace", "metrics": {paper_tables.HEADLINE: {"data": {"val": {"ADD": 16.05}}}}}}
    done = {**running, "name": "t1-direct6dof", "data": {**running["data"], "rev": "7c911bda"}}
    assert set(paper_tables.experiment_metrics([running, done])) == {"t1-direct6dof"}


def test_table_one_puts_each_experiment_beside_the_papers_row(metrics):
    table = paper_tables.load_spec()[0]
    frame = paper_tables.assemble(table, metrics, "val").set_index("method")
    assert list(frame.columns) == ["experiment", "ours MAE_r", "ours MAE_t", "ours ADD",
                                   "paper MAE_r", "paper MAE_t", "paper ADD"]
    assert frame.loc["Direct 6DoF (CoordConv)", "ours MAE_r"] == 2.9
    assert frame.loc["Direct 6DoF (CoordConv)", "paper ADD"] == 13.42
    assert frame.loc["GNLL & PnP", "ours ADD"] == 17.2
    assert math.isnan(frame.loc["PerspNet", "ours ADD"]) and frame.loc["PerspNet", "paper MAE_r"] == 0.99
    test = paper_tables.assemble(table, metrics, "test").set_index("method")
    assert test.loc["Direct 6DoF", "ours MAE_t"] == 10.5


def test_missing_experiments_and_paper_figures_render_as_dashes(metrics):
    shape, finetune = paper_tables.load_spec()[1:]
    text = paper_tables.render("T2", paper_tables.assemble(shape, metrics, "val"))
    assert "| Direct 3D | t2-direct3d | - | - | 1.79 | 1.82 |" in text
    assert "| PCA | t1-gnll-pnp | 3.30 | 3.40 | 1.63 | 1.68 |" in text
    control = paper_tables.assemble(finetune, metrics, "val").iloc[-1]
    assert control["experiment"] == "t3-control" and math.isnan(control["paper ADD"])


def test_a_profile_suffix_selects_that_profiles_experiments(metrics):
    renamed = {f"{name}-paper": value for name, value in metrics.items()}
    frame = paper_tables.assemble(paper_tables.load_spec()[0], renamed, "val", "-paper")
    assert frame["ours ADD"].notna().sum() == 4 and frame["experiment"][0] == "t1-direct6dof-paper"


def test_a_row_whose_figures_do_not_fit_its_columns_stops_naming_the_file(tmp_path):
    bad = tmp_path / "tables.yaml"
    bad.write_text("tables:\n  - title: T\n    columns: [ADD]\n    rows:\n      - {method: m, paper: [1.0, 2.0]}\n")
    with pytest.raises(SystemExit, match=r"tables.yaml: T / m: 2 paper figures for 1 columns"):
        paper_tables.load_spec(bad)


def test_every_table_row_has_a_grid_experiment_with_valid_params():
    named = {row["experiment"] for table in paper_tables.load_spec() for row in table["rows"] if "experiment" in row}
    assert named == set(paper_grid.GRID)
    for command in paper_grid.commands("demo"):
        apply_overrides(load_params("params.yaml"), [command[i + 1] for i, arg in enumerate(command) if arg == "-S"])


def test_a_profile_grid_sets_exactly_the_profiles_keys():
    params = apply_overrides(load_params("params.yaml"), paper_grid.profile_assignments("paper"))
    assert params == profile_params("paper")
    names = [command[command.index("-n") + 1] for command in paper_grid.commands("paper")]
    assert names == [f"{name}-paper" for name in paper_grid.GRID]
