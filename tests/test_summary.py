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


def _ablation_row(name: str, ours: float | None, paper: float | None) -> dict:
    row = _row(name, "k3_e1 | k3_e6")
    row["metrics"] = {"mIoU": ours} if ours is not None else {}
    row["complete"] = ours is not None
    row["paper"] = {"value": paper, "ref": f"Table 5 {name}"} if paper is not None else None
    return row


def test_ablation_table_puts_the_papers_number_beside_ours_and_counts_agreeing_pairs() -> None:
    rows = [_ablation_row("remap", 50.0, 76.6), _ablation_row("rr", 40.0, 72.4), _ablation_row("rt", 45.0, 73.0),
            _ablation_row("tr", 41.0, 76.0), _ablation_row("seed_arch", 60.0, None),
            _ablation_row("std", 44.0, 75.8), _ablation_row("bn", 46.0, 75.8), _ablation_row("dead", None, 75.3)]
    table = variants_table(rows, "mIoU")
    lines = table.strip().splitlines()
    assert lines[0].startswith("| variant | overrides | mIoU | paper | paper's table |")
    assert "| 50.00 | 76.6 | Table 5 remap |" in table and "| 60.00 | - | - |" in table
    # finished, with a paper number: remap, rr, rt, tr, std, bn -> 15 pairs, the std/bn tie (75.8) left out: 14.
    # Disagreeing: (tr, rt) 41 < 45 but 76.0 > 73.0; (tr, std), (tr, bn) likewise; (std, rt) 44 < 45 but 75.8 > 73.0.
    assert "Ordered as in the paper: 10 of 14 pairs" in table
    cells = {len(line.replace("\\|", "").split("|")) for line in lines[:len(rows) + 2]}
    assert len(cells) == 1


def test_a_table_without_paper_numbers_has_no_paper_columns() -> None:
    table = variants_table([_row("a", "k3_e1")], "mIoU")
    assert "paper" not in table and "Ordered" not in table


def test_pareto_points_are_labelled_by_their_knobs_beside_the_seeds_cost(tmp_path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """Each point carries its knobs in full (the same text as the trial's MLflow run name), and the seed's own
    whole-network cost is drawn as a reference line."""
    from fnatune import summary

    assert summary.knob_label({"search.cost.lambda": 0.031249, "search.temperature": 1.4, "search.epochs": 3}) == \
        "lambda=0.03125, temperature=1.4, epochs=3"
    rows = [{"name": "t1", "set": {"search.cost.lambda": 0.02}, "madds_B": 20.0, "seed_madds_B": 24.5,
             "metrics": {"mIoU": 50.0}, "pareto": True},
            {"name": "t2", "set": {"search.cost.lambda": 0.2}, "madds_B": 15.0, "seed_madds_B": 24.5,
             "metrics": {"mIoU": 45.0}, "pareto": True}]
    texts, lines = [], []
    import matplotlib.axes

    real_annotate, real_axvline = matplotlib.axes.Axes.annotate, matplotlib.axes.Axes.axvline
    monkeypatch.setattr(matplotlib.axes.Axes, "annotate",
                        lambda self, text, *a, **k: texts.append(text) or real_annotate(self, text, *a, **k))
    monkeypatch.setattr(matplotlib.axes.Axes, "axvline",
                        lambda self, x=0, *a, **k: lines.append((x, k.get("label"))) or real_axvline(self, x, *a, **k))
    out = summary.pareto_plot(rows, "mIoU", tmp_path / "p.png", "t")
    assert out.stat().st_size > 0
    assert texts == ["lambda=0.02", "lambda=0.2"]
    assert lines == [(24.5, "the seed's own arch: 24.50 B")]
