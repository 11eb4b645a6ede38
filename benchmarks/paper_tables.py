"""The paper's Tables 1-3 beside the grid's experiments (benchmarks/paper_grid.py).

    python -m benchmarks.paper_tables [--json exp_show.json] [--split val|test] [--suffix -paper]

Reads `dvc exp show --json` (run here unless --json names a saved copy), takes each named
experiment's headline metrics (artifacts/evaluate/infer/headline.json) and prints every table
of benchmarks/paper_tables.yaml with our figures and the paper's side by side (markdown). An
experiment that has not run (or failed) shows '-'.
"""
from __future__ import annotations

import argparse
import json
import subprocess
from pathlib import Path

import pandas as pd
import yaml

SPEC = Path(__file__).with_name("paper_tables.yaml")
HEADLINE = "artifacts/evaluate/infer/headline.json"


def experiment_metrics(show: list | dict) -> dict[str, dict]:
    """`dvc exp show --json` output -> {experiment name: its headline {split: {key: value}}}.

    Walks the whole document: every entry with a name and metrics of HEADLINE counts (the
    workspace and branch entries too, under their names), wherever DVC nests it."""
    found: dict[str, dict] = {}
    if isinstance(show, list):
        for item in show:
            found.update(experiment_metrics(item))
    elif isinstance(show, dict):
        data = show.get("data")
        name = show.get("name")
        if name and isinstance(data, dict):
            headline = ((data.get("metrics") or {}).get(HEADLINE) or {}).get("data")
            if headline:
                found[name] = headline
        for value in show.values():
            if isinstance(value, (list, dict)):
                found.update(experiment_metrics(value))
    return found


def load_spec(path: Path = SPEC) -> list[dict]:
    """The tables of paper_tables.yaml; stops naming the file when a row's figures do not fit its columns."""
    tables = yaml.safe_load(path.read_text())["tables"]
    for table in tables:
        for row in table["rows"]:
            if "paper" in row and len(row["paper"]) != len(table["columns"]):
                raise SystemExit(f"{path}: {table['title']} / {row['method']}: {len(row['paper'])} paper figures "
                                 f"for {len(table['columns'])} columns")
    return tables


def assemble(table: dict, metrics: dict[str, dict], split: str, suffix: str = "") -> pd.DataFrame:
    """One table: a row per method, columns 'ours <key>' (NaN when its experiment has no
    metrics) and 'paper <key>' (NaN when the paper gives none), plus the experiment's name."""
    rows = []
    for row in table["rows"]:
        name = row.get("experiment")
        ours = metrics.get(f"{name}{suffix}", {}).get(split, {}) if name else {}
        paper = row.get("paper") or [float("nan")] * len(table["columns"])
        rows.append({"method": row["method"], "experiment": f"{name}{suffix}" if name else "-",
                     **{f"ours {c}": ours.get(c, float("nan")) for c in table["columns"]},
                     **{f"paper {c}": p for c, p in zip(table["columns"], paper)}})
    return pd.DataFrame(rows)


def render(title: str, frame: pd.DataFrame) -> str:
    """A markdown table with two decimals and '-' for missing figures."""
    cells = frame.astype(object).where(frame.notna(), "-")
    head = "| " + " | ".join(frame.columns) + " |\n|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(f"{v:.2f}" if isinstance(v, float) else str(v) for v in row) + " |"
            for row in cells.itertuples(index=False)]
    return f"{title}\n\n{head}\n" + "\n".join(body)


def read_show(path: str | None) -> list:
    """A saved `dvc exp show --json`, or a fresh one."""
    if path:
        return json.loads(Path(path).read_text())
    done = subprocess.run(["dvc", "exp", "show", "--json"], check=True, capture_output=True, text=True)
    return json.loads(done.stdout)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", help="saved output of `dvc exp show --json` (default: run it)")
    parser.add_argument("--split", default="val", choices=("val", "test"))
    parser.add_argument("--suffix", default="", help="experiment name suffix of a profile grid, e.g. -paper")
    args = parser.parse_args()
    metrics = experiment_metrics(read_show(args.json))
    for table in load_spec():
        print(render(f"{table['title']} ({args.split})", assemble(table, metrics, args.split, args.suffix)), end="\n\n")


if __name__ == "__main__":
    main()
