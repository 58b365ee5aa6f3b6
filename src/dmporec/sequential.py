"""SASRec, the sequential baseline (Kang & McAuley 2018), from Cornac, scored like the classic ones.

SASRec reads a user's history as a sequence and scores the next item: a causal self-attention
encoder over the last `max_len` history items; the last position's output h is dotted with each
item's embedding e_i, f_u(i) = h . e_i. It is the sequential baseline of LLaRA and S-DPO; the
SASRec paper reports HR@10 ~0.82 on MovieLens-1M (all 6,040 users' full sequences, 100 sampled
negatives), which the few-shot files here (hundreds of users, a window of <= 40 ratings, the
positives only) do not give it.

The model and its training loop are Cornac's (`cornac.models.SASRec`, the `seq` extra:
`pip install 'dmporec[seq]'`): every prefix of every fitted sequence predicts the item that
follows it, softmax cross-entropy against the other targets of the batch and 2,048 sampled
items. The samples are drawn uniformly from the fitted items, as the SASRec paper draws its
negatives; Cornac's default draws them by popularity^0.5, which on the MovieLens-1M validation
users ranked a held-out next item lower (top 4.0% of the items against 2.5%) and left the scores
far less tied to popularity. Cornac's BCE loss (every other column a negative) learned no order
there in 5 epochs, so the loss is its softmax cross-entropy.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np
import torch

from dmporec.records import Record

INSTALL = "pip install 'dmporec[seq]' (cornac)"


def sequences(records: Iterable[Record]) -> dict[str, list[str]]:
    """Each user's history titles in the order the records give them (the data's time order):
    the sequences SASRec is fitted on, one per user. A user of several records keeps the first
    record's history (the records of one user share it: the authors' k pairs of a user)."""
    out: dict[str, list[str]] = {}
    for r in records:
        out.setdefault(r.user_id, [i.title for i in r.history])
    return out


class SASRec:
    """SASRec fitted on the records' histories; `score` encodes a record's history and dots it
    with each candidate's item embedding (a `baselines.Scorer`).

    Scoring: any user, fitted or not, is read from their history alone (the sequence is the
    model's input): the history titles the model knows, in order, the last `max_len` of them;
    none known gives every item the same score. A candidate title in no fitted history has no
    embedding and scores as the mean item embedding would, i.e. the mean of the known items'
    scores for that user (an average item, as BPRMF does); such candidates tie.
    """

    name = "sasrec"

    def __init__(self, model: Any, items: dict[str, int]) -> None:
        self.model, self.items = model, items

    @classmethod
    def fit(
        cls,
        records: Iterable[Record],
        *,
        epochs: int = 10,
        dim: int = 32,
        max_len: int = 40,
        blocks: int = 2,
        dropout: float = 0.2,
        lr: float = 1e-3,
        batch_size: int = 512,
        seed: int = 0,
    ) -> SASRec:
        """Fit on every user's history sequence (`sequences`). Seeded: Cornac seeds torch's
        generator and its own for shuffling and negatives, so the same records and settings give
        the same model; torch's global generator is restored afterwards. Cornac shows a progress
        bar over the epochs; with these defaults the 2,000 histories (~44k prefixes) of the
        MovieLens-1M training and test users take 125 s (one thread)."""
        try:
            from cornac.data import SequentialDataset
            from cornac.models import SASRec as CornacSASRec
        except ImportError as e:
            raise ImportError(f"the SASRec baseline needs Cornac: {INSTALL}") from e

        seqs = sequences(records)
        # (user, session, item, time): one session per user, its position as the time
        rows = [
            (user, user, title, t)
            for user, titles in seqs.items()
            for t, title in enumerate(titles)
        ]
        if not rows:
            raise ValueError("SASRec: the records have no history to fit on")
        data = SequentialDataset.build(rows, fmt="USIT", seed=seed)
        model = CornacSASRec(
            embedding_dim=dim,
            n_epochs=epochs,
            max_len=max_len,
            num_blocks=blocks,
            num_heads=1,  # the SASRec paper's on MovieLens-1M
            dropout=dropout,
            learning_rate=lr,
            batch_size=batch_size,
            loss="ce",
            sample_alpha=0.0,
            seed=seed,
            verbose=True,
        )
        threads = torch.get_num_threads()
        # One thread: on 2 shared cores, torch's threads spin-waiting beside another busy process
        # made a MovieLens-1M fit 11x slower (1,103 s); alone, 2 threads are only 1.3x faster.
        torch.set_num_threads(1)
        try:
            with torch.random.fork_rng(devices=[]):
                model.fit(data)
        finally:
            torch.set_num_threads(threads)
        return cls(model, dict(data.iid_map))

    def item_scores(self, record: Record) -> np.ndarray:
        """f_u(i) for every fitted item i, from the record's history."""
        history = [self.items[i.title] for i in record.history if i.title in self.items]
        return np.asarray(self.model.score(None, history), float).reshape(-1)

    def score(self, record: Record, candidates: Sequence[str]) -> list[float]:
        scores = self.item_scores(record)
        mean = float(scores.mean())
        return [
            float(scores[i]) if (i := self.items.get(t)) is not None else mean for t in candidates
        ]
