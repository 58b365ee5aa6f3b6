"""Why a recommended item: the question put to the model for a generated explanation.

The adapters were trained on ranking answers only, so a generated explanation comes from what
the base model already knows; a heavily trained adapter may answer in the ranking format.
"""

from __future__ import annotations

from collections.abc import Sequence

from dmporec.prompts import history_text, title_tag
from dmporec.wording import WORDINGS, Wording

# A short answer is all the explanation needs; it also bounds a request's generation time.
EXPLAIN_MAX_NEW_TOKENS = 64


def explain_instruction(
    history: Sequence[str], title: str, wording: Wording = WORDINGS["movies"]
) -> str:
    """The question behind a generated explanation, in the paper's wording up to the history.

    >>> explain_instruction(["Heat"], "Up")
    "You are an assistant working on movie recommendations. Here is the user's history of movies they have watched:  <Title:Heat> . In one or two sentences, explain why the user would enjoy watching the movie  <Title:Up> ."
    """
    return (
        history_text(list(history), wording)
        + f". In one or two sentences, explain why the user would enjoy {wording.gerund} the "
        + f"{wording.role} "
        + title_tag(title)
        + "."
    )
