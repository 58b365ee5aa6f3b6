"""The hybrid ranker: the LLM's pairwise evidence and classic scorers fused by a logistic
regression fitted on validation users only.

Every component gives each pair a margin, positive side minus negative side: the LLM its answer
log-prob margin (chosen - rejected, both listing orders added, as evaluation scores a pair), a
classic scorer score(positive) - score(negative) (popularity as log(1 + count), so one blockbuster
does not swamp the rest). The fused margin is

    m = sum_c w_c * margin_c / scale_c

with scale_c the root-mean-square of component c's margins on the validation pairs (no centring:
a pair read the other way round gets exactly -m) and no intercept. The weights are fitted by
scikit-learn's LogisticRegression on the validation pairs, each pair entered both ways round
(x, 1) and (-x, 0), so the model is antisymmetric and ignores which side is listed first; its
regularization C is chosen by GridSearchCV's log-loss over validation users (GroupKFold: a user's
pairs, both ways round, stay in one fold), and the cross-validated accuracy at that C is kept
beside it. Log-loss, not accuracy: on 786 validation pairs accuracy is flat and noisy across C,
and in nested cross-validation over the validation users of three MovieLens-1M cells (SFT, DPO,
DMPO at N = 1000; docs/results.md) choosing by log-loss gave the higher held-out accuracy in
each. Test users never touch the fit.

As scores: chosen = m / 2, rejected = -m / 2, so pairwise accuracy is the share of m > 0 and both
AUCs pool the fused confidence across users. For a candidate list the classic terms are item
scores already (w_c * score_c / scale_c); the LLM term is the item's mean log-prob margin against
the other candidates it was compared with (ranking.pivot_scores: the pivots, or all of them), so
differences of item scores read as the pair margins the weights were fitted on.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from dmporec.files import atomic_write_text

Array = np.ndarray
LLM = "llm"  # the component name of the trained model's margins
SELECTED_BY = "log-loss"  # how Hybrid.fit chooses C (older fits: "accuracy")
SELECTIONS = {"log-loss": "log_loss", "accuracy": "accuracy"}  # GridSearchCV scorer names


@dataclass(frozen=True)
class Hybrid:
    """A fitted fusion: one weight and one scale per component, in `components` order."""

    components: tuple[str, ...]
    scales: tuple[float, ...]
    weights: tuple[float, ...]
    C: float
    valid_pairs: int
    valid_users: int
    cv_accuracy: float
    # How C was chosen; hybrids saved before log-loss selection read back as "accuracy".
    selected_by: str = "accuracy"
    cv_log_loss: float | None = None

    @classmethod
    def fit(
        cls,
        margins: Mapping[str, Array],
        users: Array,
        *,
        folds: int = 5,
        selected_by: str = SELECTED_BY,
    ) -> Hybrid:
        """Fit on validation pairs: `margins[c][i]` = component c's margin of pair i (positive
        minus negative), `users[i]` its user. `selected_by`: what chooses C ("log-loss", the
        default, or "accuracy", how older hybrids were fitted; benchmarks/hybrid_selection.py
        compares them). Raises ValueError on too few users for the folds, margins of different
        lengths or non-finite margins, naming the component."""
        from sklearn.linear_model import LogisticRegression
        from sklearn.model_selection import GridSearchCV, GroupKFold

        if selected_by not in SELECTIONS:
            raise ValueError(f"hybrid: selected_by must be one of {', '.join(SELECTIONS)}")
        components = tuple(margins)
        users = np.asarray(users)
        x = _matrix(margins, components, users.size)
        n_users = np.unique(users).size
        if n_users < folds:
            raise ValueError(
                f"hybrid: {n_users} validation users, at least {folds} needed to choose the "
                "regularization by cross-validation"
            )
        scales = np.sqrt(np.mean(x**2, axis=0))
        scales[scales == 0] = 1.0  # a constant-zero component (no signal) keeps weight ~0
        z = x / scales
        both = np.r_[z, -z]
        labels = np.r_[np.ones(len(z), int), np.zeros(len(z), int)]
        groups = np.r_[users, users]
        splits = list(GroupKFold(n_splits=folds).split(both, labels, groups))
        search = GridSearchCV(
            LogisticRegression(fit_intercept=False, max_iter=1000),
            {"C": list(np.logspace(-3, 2, 11))},
            cv=splits,
            scoring={"log_loss": "neg_log_loss", "accuracy": "accuracy"},
            refit=SELECTIONS[selected_by],
        )
        search.fit(both, labels)
        model = search.best_estimator_
        best = search.cv_results_
        return cls(
            components=components,
            scales=tuple(float(s) for s in scales),
            weights=tuple(float(w) for w in model.coef_[0]),
            C=float(search.best_params_["C"]),
            valid_pairs=int(len(z)),
            valid_users=int(n_users),
            cv_accuracy=float(best["mean_test_accuracy"][search.best_index_]),
            selected_by=selected_by,
            cv_log_loss=float(-best["mean_test_log_loss"][search.best_index_]),
        )

    def margin(self, margins: Mapping[str, Array]) -> Array:
        """The fused margin of each pair (see the module docstring). Every fitted component
        must be given: a missing one raises ValueError naming it (it is never dropped)."""
        missing = [c for c in self.components if c not in margins]
        if missing:
            raise ValueError(
                f"hybrid: no margins for {', '.join(missing)}; it was fitted on "
                f"{', '.join(self.components)}"
            )
        n = len(np.asarray(margins[self.components[0]]))
        x = _matrix(margins, self.components, n)
        return x @ (np.asarray(self.weights) / np.asarray(self.scales))

    def chosen_rejected_scores(self, margins: Mapping[str, Array]) -> tuple[Array, Array]:
        """(chosen, rejected) = (m / 2, -m / 2), as metrics.pairwise_report takes them."""
        m = self.margin(margins)
        return m / 2, -m / 2

    def item_scores(self, scores: Mapping[str, Sequence[float]]) -> Array:
        """One fused score per candidate from per-item component scores (the LLM's its mean
        log-prob margin, ranking.pivot_scores); differences of these are the fused margins."""
        return self.margin({c: np.asarray(v, float) for c, v in scores.items()})

    def table(self) -> str:
        """The weights as a markdown table (per unit of each component's margin, and per
        validation RMS, which compares the components)."""
        chosen = f"C = {self.C:g} by cross-validated {self.selected_by}"
        if self.cv_log_loss is not None:
            chosen += f" {self.cv_log_loss:.4f}"
        lines = [
            f"Hybrid fitted on {self.valid_pairs} pairs of {self.valid_users} validation users "
            f"({chosen}; cross-validated accuracy {self.cv_accuracy:.3f}):",
            "",
            "| component | weight per RMS margin | margin RMS on validation | weight per unit |",
            "|---|---|---|---|",
        ]
        for c, w, s in zip(self.components, self.weights, self.scales, strict=True):
            lines.append(f"| {c} | {w:+.3f} | {s:.4g} | {w / s:+.4g} |")
        return "\n".join(lines)

    def save(self, path: Path) -> None:
        atomic_write_text(path, json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, path: Path) -> Hybrid:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (OSError, ValueError) as e:
            raise ValueError(f"{path}: not a saved hybrid ({e})") from e

    @classmethod
    def from_dict(cls, data: Mapping) -> Hybrid:
        """The hybrid `save` wrote as JSON, read back; ValueError when it is not one."""
        try:
            return cls(**{**data, "components": tuple(data["components"]),
                          "scales": tuple(data["scales"]), "weights": tuple(data["weights"])})  # fmt: skip
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"not a saved hybrid ({e!r})") from e


def popularity_margin(chosen: Array, rejected: Array) -> Array:
    """Popularity's margin on a log scale: log(1 + count(positive)) - log(1 + count(negative))."""
    return np.log1p(np.asarray(chosen, float)) - np.log1p(np.asarray(rejected, float))


def _matrix(margins: Mapping[str, Array], components: Sequence[str], n: int) -> Array:
    columns = []
    for c in components:
        m = np.asarray(margins[c], float)
        if m.shape != (n,):
            raise ValueError(f"hybrid: component {c} has {m.size} margins, expected {n}")
        if not np.all(np.isfinite(m)):
            raise ValueError(f"hybrid: component {c} has non-finite margins")
        columns.append(m)
    return np.stack(columns, axis=1) if columns else np.zeros((n, 0))
