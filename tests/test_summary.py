"""The sweep and ablation tables: one markdown row per trial, whatever the cells hold."""
from __future__ import annotations

from fnatune.summary import pareto_front, sweep_table, variants_table


def _row(name: str, arch: str, status: str = "done") -> dict:
    return {"name": name, "set": {"search.cost.lambda": 0.02}, "metrics": {"mIoU": 41.5}, "params_M": 2.5,
            "madds_B": 24.2, "hours": 0.01, "arch": arch, "status": status, "pareto": True}


def test_block_strings_do_not_break_the_markdown_tables() -> None:
    """Block strings separate stages with '|': each row must still have the header's number of cells."""
    rows = [_row("t1", "k3_e1 | k5_e6 skip | k3_e3"), _row("t2", "k7_e6 | k3_e1", "failed: bad | input")]
    for table in (sweep_table(rows, "mIoU", ["search.cost.lambda"]), variants_table(rows, "mIoU")):
        lines = table.strip().splitlines()
        cells = [len(line.replace("\\|", "").split("|")) for line in lines]
        assert len(set(cells)) == 1, table
    assert "k3_e1 \\| k5_e6 skip \\| k3_e3" in sweep_table(rows, "mIoU", ["search.cost.lambda"])


def test_pareto_front_keeps_the_undominated_points_sorted_by_cost() -> None:
    points = [(40.0, 10.0), (42.0, 12.0), (41.0, 13.0), (39.0, 9.0), (42.0, 11.0)]
    assert pareto_front(points) == [3, 0, 4]
