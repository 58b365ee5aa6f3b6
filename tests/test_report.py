"""dmporec.report's accuracy-against-k plot: one line per group of cells that differ in k alone
(the learning curve's DMPO cells of N = 100 and N = 1000 once shared a line)."""

import pytest

from dmporec import report


def row(cell: str, k: int, train: str, lr: float = 1e-3, acc: float = 0.6) -> dict:
    settings = {"dmpo.k": k, "data.dmpo_train": f"runs/data/{train}", "dmpo.learning_rate": lr}
    metrics = {"accuracy": acc, "accuracy_ci_low": acc - 0.03, "accuracy_ci_high": acc + 0.03,
               "auc": acc + 0.05, "auc_ci_low": acc + 0.01, "auc_ci_high": acc + 0.09}  # fmt: skip
    return {"cell": cell, "model": "dmpo", "stage": "dmpo", "settings": settings,
            "metrics": metrics}  # fmt: skip


def test_cells_of_other_settings_never_share_a_k_line(tmp_path, monkeypatch):
    rows = [
        row("dpo-k1-1000", 1, "train_1000.jsonl"),
        row("dmpo-k3-1000", 3, "train_1000.jsonl"),
        row("dmpo-k5-1000", 5, "train_1000.jsonl"),
        row("dmpo-k3-100", 3, "train_100.jsonl"),  # alone at its N: no line
        row("dmpo-k3-1000-lr3", 3, "train_1000.jsonl", lr=3e-3),  # alone at its lr: no line
        {"cell": "baselines", "model": "bpr-mf", "stage": "baselines", "metrics": {}},
    ]
    seen = {}

    def sweep(rows, x, out, *, line=None, metrics=("accuracy",), **kw):
        seen.update(rows=rows, x=x, line=line, metrics=metrics)
        return out

    rows[1]["settings"]["hybrid"] = True  # a run toggle an older row lacks: not a difference
    monkeypatch.setattr(report, "plot_sweep", sweep)
    report.plot_vs_k(rows, tmp_path / "k.png")
    assert [r["cell"] for r in seen["rows"]] == ["dpo-k1-1000", "dmpo-k3-1000", "dmpo-k5-1000"]
    names = {r["vars"][seen["line"]] for r in seen["rows"]}
    assert names == {"dmpo"}  # one line: nothing kept tells it from another, so its loss
    assert seen["metrics"] == ("accuracy", "auc")  # a panel each
    monkeypatch.undo()
    assert report.plot_vs_k(rows, tmp_path / "k.png") == tmp_path / "k.png"
    assert (tmp_path / "k.png").stat().st_size > 0
    assert report.plot_vs_k(rows[3:], tmp_path / "none.png") is None  # no line of two k


def test_a_loss_at_one_k_beside_a_line_is_a_point_of_its_own(tmp_path, monkeypatch):
    """S-DPO at k = 3 on DMPO's settings is drawn beside DMPO's line, named by its loss; one
    that differs in more than its loss (another N) is still left out."""
    rows = [row(f"dmpo-k{k}", k, "train_1000.jsonl") for k in (1, 3, 5)]
    rows += [row("sdpo-k3", 3, "train_1000.jsonl"), row("sdpo-k3-100", 3, "train_100.jsonl")]
    for r in rows:
        r["settings"]["dmpo.loss"] = "sdpo" if r["cell"].startswith("sdpo") else "dmpo"
    seen = {}

    def sweep(rows, x, out, *, line=None, **kw):
        seen.update(rows=rows, line=line)
        return out

    monkeypatch.setattr(report, "plot_sweep", sweep)
    report.plot_vs_k(rows, tmp_path / "k.png")
    names = {r["cell"]: r["vars"][seen["line"]] for r in seen["rows"]}
    assert names == {"dmpo-k1": "loss dmpo", "dmpo-k3": "loss dmpo", "dmpo-k5": "loss dmpo",
                     "sdpo-k3": "loss sdpo"}  # fmt: skip
    assert report.plot_vs_k(rows[3:], tmp_path / "none.png") is None  # no line to stand beside


def test_the_k_plot_draws_a_panel_per_metric_with_its_intervals(tmp_path, monkeypatch):
    """Both panels get the line's three points with their own CIs (AUC's from auc_ci_*)."""
    import matplotlib.axes

    rows = [row(f"k{k}", k, "train_1000.jsonl", acc=0.55 + 0.02 * k) for k in (1, 3, 5)]
    drawn = []
    original = matplotlib.axes.Axes.errorbar

    def errorbar(self, x, y, yerr=None, **kw):
        drawn.append((self.get_ylabel(), list(y), [list(e) for e in yerr]))
        return original(self, x, y, yerr=yerr, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", errorbar)
    assert report.plot_vs_k(rows, tmp_path / "k.png") == tmp_path / "k.png"
    (acc_y, acc_err), (auc_y, auc_err) = [(y, e) for _, y, e in drawn]
    assert acc_y == pytest.approx([0.57, 0.61, 0.65]) and auc_y == pytest.approx([0.62, 0.66, 0.70])
    assert acc_err[0] + acc_err[1] == pytest.approx([0.03] * 6)  # below and above
    assert auc_err[0] + auc_err[1] == pytest.approx([0.04] * 6)


def test_a_line_without_auc_keeps_its_colour_and_its_legend_entry(tmp_path, monkeypatch):
    """A line with accuracy CIs only (rows from before AUC CIs were kept) is drawn in the
    accuracy panel alone, in the same colour as it would have anywhere, and stays in the legend."""
    import matplotlib.axes

    rows = [row(f"a{k}", k, "train_1000.jsonl") for k in (1, 3)]
    rows += [row(f"b{k}", k, "train_400.jsonl") for k in (1, 3)]
    for r in rows[2:]:
        r["metrics"] = {k: v for k, v in r["metrics"].items() if not k.startswith("auc")}
    colours, legends = [], []
    errorbar, legend = matplotlib.axes.Axes.errorbar, matplotlib.axes.Axes.legend

    def spy_errorbar(self, *a, **kw):
        colours.append((self.get_ylabel(), kw["label"], kw["color"]))
        return errorbar(self, *a, **kw)

    def spy_legend(self, *a, **kw):
        legends.append(list(a[1]))
        return legend(self, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy_errorbar)
    monkeypatch.setattr(matplotlib.axes.Axes, "legend", spy_legend)
    assert report.plot_vs_k(rows, tmp_path / "k.png") == tmp_path / "k.png"
    by_line = {}
    for _, label, colour in colours:
        by_line.setdefault(label, set()).add(colour)
    assert len(colours) == 3 and all(len(c) == 1 for c in by_line.values())
    assert len({next(iter(c)) for c in by_line.values()}) == 2  # two lines, two colours
    assert len(legends) == 1 and sorted(legends[0]) == sorted(by_line)


def test_more_lines_than_ten_never_share_a_colour(tmp_path, monkeypatch):
    """The learning curve has 12 lines: the default cycle's ten colours would draw two of them
    alike (DMPO k=2 as popularity); past ten the plot takes twenty."""
    import matplotlib.axes

    rows = []
    for i in range(12):
        for n in (100, 1000):
            rows.append({**row(f"m{i}-{n}", 3, "t.jsonl"), "model": f"m{i}", "vars": {"n": n}})
    colours = {}
    errorbar = matplotlib.axes.Axes.errorbar

    def spy_errorbar(self, *a, **kw):
        colours[kw["label"]] = kw["color"]
        return errorbar(self, *a, **kw)

    monkeypatch.setattr(matplotlib.axes.Axes, "errorbar", spy_errorbar)
    assert report.plot_sweep(rows, "n", tmp_path / "curve.png") == tmp_path / "curve.png"
    assert len(colours) == 12 and len(set(colours.values())) == 12
