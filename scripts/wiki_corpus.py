"""The benchmarks' texts: sentences of the Wikipedia lead summaries in bench-data/ (fetched by
scripts/fetch-bench-data.sh) and the clauses of the English ones, cut the same way by every
script that uses them, so that their vectors and their texts line up.

- `embedded()`: every text scripts/make-minilm-vectors.sh embeds, in the order of the rows of
  bench-data/minilm_wiki.f32.
- `search_split()`: what scripts/bench-search.sh and scripts/bench-qdrant.sh use: 2,000 English
  sentences held out as queries, the next 5,000 for an ingest stream, and a corpus of the rest
  (their clauses, the Spanish and French sentences). Every one of these texts is in
  `embedded()`, so its vector is a row of minilm_wiki.f32.
"""

import json
import re


def sentences(lang):
    """The distinct sentences of 20 to 400 characters of one language's summaries."""
    seen, out = set(), []
    for item in json.load(open(f"bench-data/summaries_{lang}.json")).values():
        for s in re.split(r"(?<=[.!?])\s+", item.get("extract", "")):
            s = s.strip()
            if 20 <= len(s) <= 400 and s not in seen:
                seen.add(s)
                out.append(s)
    return out


def clauses(s):
    """The clauses of at least 30 characters of a sentence that has several."""
    parts = [p.strip() for p in re.split(r"[,;:]\s+", s)]
    return [p for p in parts if len(p) >= 30 and p != s] if len(parts) > 1 else []


def embedded():
    en = sentences("en-us")
    corpus = list(en)
    for s in en:
        corpus.extend(clauses(s))
    return list(dict.fromkeys(corpus + sentences("es-es") + sentences("fr-fr")))


def search_split(limit=0):
    """(queries, stream, corpus); `limit` > 0 keeps the corpus's first `limit` texts."""
    en = sentences("en-us")
    queries, stream, rest = en[:2000], en[2000:7000], en[7000:]
    corpus = list(rest)
    for s in rest:
        corpus.extend(clauses(s))
    corpus += sentences("es-es") + sentences("fr-fr")
    corpus = list(dict.fromkeys(corpus))
    if limit:
        corpus = corpus[:limit]
    return queries, stream, corpus
