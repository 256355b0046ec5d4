"""Call a running shoal node the way users do, with the real Python clients: the OpenAI SDK
(/v1/embeddings), Cohere's v1 and v2 clients (/v1/rerank, /v2/rerank), huggingface_hub's
InferenceClient (Text Embeddings Inference's root routes), and TEI's /rerank shape over plain
HTTP. Each is called with a valid credential and with a wrong one (which must be refused with 401).

Usage: clients_check.py BASE_URL API_KEY. Prints one JSON object with what each client got; exits
1 with the reason on the first thing that is wrong.
"""

import json
import math
import sys
import urllib.error
import urllib.request

import cohere
import numpy as np
import openai
from huggingface_hub import InferenceClient

BASE, KEY = sys.argv[1], sys.argv[2]
WRONG = "shoal_notakey_0000000000000000000000000000000000000000"
DOCS = [
    "Photosynthesis lets green plants turn sunlight into chemical energy.",
    "The Eiffel Tower is a wrought-iron lattice tower in Paris.",
    "Chess is a board game for two players.",
]
QUERY = "how do plants make food from light"


def fail(msg):
    print(f"clients_check: {msg}", file=sys.stderr)
    sys.exit(1)


def post(path, body, key=KEY):
    req = urllib.request.Request(
        BASE + path,
        data=json.dumps(body).encode(),
        headers={"content-type": "application/json", "authorization": f"Bearer {key}"},
    )
    with urllib.request.urlopen(req, timeout=60) as r:
        return json.loads(r.read())


def refused(call, what):
    """`call` must fail with a 401 from the node."""
    try:
        call()
    except Exception as e:  # each client has its own error type; all carry the status
        status = getattr(e, "status_code", None) or getattr(e, "status", None)
        if status is None and getattr(e, "response", None) is not None:
            status = e.response.status_code
        if status is None and isinstance(e, urllib.error.HTTPError):
            status = e.code
        if status != 401:
            fail(f"{what} with a wrong key: expected 401, got {type(e).__name__} {status}: {e}")
        return
    fail(f"{what} with a wrong key was served")


def cosine(a, b):
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


out = {}
# the node's own answer, as floats, is what every client must agree with
own = [d["embedding"] for d in post("/v1/embeddings", {"input": DOCS})["data"]]

# --- OpenAI SDK: asks for base64 by default and decodes it with numpy
oa = openai.OpenAI(base_url=BASE + "/v1", api_key=KEY)
emb = oa.embeddings.create(model="all-MiniLM-L6-v2", input=DOCS)
vecs = [d.embedding for d in emb.data]
if len(vecs) != 3 or len(vecs[0]) != len(own[0]):
    fail(f"openai: {len(vecs)} vectors of {len(vecs[0]) if vecs else 0}")
out["openai_min_cosine"] = min(cosine(a, b) for a, b in zip(vecs, own))
refused(lambda: openai.OpenAI(base_url=BASE + "/v1", api_key=WRONG).embeddings.create(model="m", input="x"), "openai")

# --- Cohere v1 and v2 rerank
c1 = cohere.Client(api_key=KEY, base_url=BASE)
r1 = c1.rerank(model="shoal", query=QUERY, documents=DOCS, top_n=2)
c2 = cohere.ClientV2(api_key=KEY, base_url=BASE)
r2 = c2.rerank(model="shoal", query=QUERY, documents=DOCS, top_n=2)
own_rr = post("/v1/rerank", {"query": QUERY, "documents": DOCS})["results"]
want = [r["index"] for r in own_rr][:2]
got1 = [r.index for r in r1.results]
got2 = [r.index for r in r2.results]
if got1 != want or got2 != want:
    fail(f"cohere: v1 {got1}, v2 {got2}, the node {want}")
for a, b in zip(r2.results, own_rr):
    if not math.isclose(a.relevance_score, b["relevance_score"], rel_tol=1e-5):
        fail(f"cohere v2 score {a.relevance_score} != {b['relevance_score']}")
out["cohere_v1_order"], out["cohere_v2_order"] = got1, got2
refused(lambda: cohere.ClientV2(api_key=WRONG, base_url=BASE).rerank(model="m", query="q", documents=["d"]), "cohere v2")
refused(lambda: cohere.Client(api_key=WRONG, base_url=BASE).rerank(model="m", query="q", documents=["d"]), "cohere v1")

# --- huggingface_hub's InferenceClient against TEI's routes
hf = InferenceClient(base_url=BASE, api_key=KEY)
fe = np.asarray(hf.feature_extraction(DOCS[0]))
if fe.shape != (1, len(own[0])):
    fail(f"huggingface_hub feature_extraction: shape {fe.shape}")
out["hf_cosine"] = cosine(fe[0], own[0])
sims = hf.sentence_similarity(QUERY, other_sentences=DOCS)
best = int(np.argmax(sims))
if len(sims) != 3 or best != 0:
    fail(f"huggingface_hub sentence_similarity: {sims}")
out["hf_similarity"] = [round(float(s), 4) for s in sims]
refused(lambda: InferenceClient(base_url=BASE, api_key=WRONG).feature_extraction("x"), "huggingface_hub")

# --- TEI's /embed and /rerank shapes over plain HTTP
tei = post("/embed", {"inputs": DOCS[:2], "normalize": True, "truncate": True})
if len(tei) != 2 or cosine(tei[1], own[1]) < 0.9999:
    fail("TEI /embed disagrees with /v1/embeddings")
tr = post("/rerank", {"query": QUERY, "texts": DOCS, "return_text": True})
if [r["index"] for r in tr][:2] != want or "text" not in tr[0]:
    fail(f"TEI /rerank: {tr}")
out["tei_rerank_order"] = [r["index"] for r in tr]
refused(lambda: post("/embed", {"inputs": "x"}, key=WRONG), "TEI /embed")

print(json.dumps(out))
