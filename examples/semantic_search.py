"""Semantic search over a few documents with the embedding model that ships in the package
(all-MiniLM-L6-v2, offline, no download).

    python examples/semantic_search.py "how do I make bread?"
"""

from __future__ import annotations

import sys

import numpy as np

import wasillama

DOCUMENTS = [
    "Knead the dough for ten minutes, let it rise for an hour, then bake it at 220 °C.",
    "The central bank raised interest rates by a quarter of a percentage point.",
    "Water the tomato plants in the morning and keep the soil moist but not wet.",
    "The striker scored twice in the second half and the team won the league.",
    "Back up your files before upgrading the operating system of your laptop.",
]


def search(query: str, documents: list[str], k: int = 3) -> list[tuple[float, str]]:
    vectors = wasillama.embed(documents)  # (n, 384), L2-normalised
    q = wasillama.embed([query])[0]
    scores = vectors @ q  # cosine similarity
    best = np.argsort(-scores)[:k]
    return [(float(scores[i]), documents[i]) for i in best]


def main() -> None:
    query = " ".join(sys.argv[1:]) or "how do I make bread?"
    for score, doc in search(query, DOCUMENTS):
        print(f"{score:.3f}  {doc}")


if __name__ == "__main__":
    main()
