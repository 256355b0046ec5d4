"""Ingest a file of JSON lines (documents: `{"id": ..., "text": ...}`) into a collection of a
shoal node, 500 documents a request, waiting as long as the node asks (429, Retry-After) when its
ingest queue is full; then wait until the collection's index holds them all. Each request has a
time limit, and each wait a deadline (an hour: ~100k texts on two cores take about 20 minutes).

Usage: python3 scripts/ingest_jsonl.py NODE COLLECTION FILE
(used by scripts/bench-search.sh and scripts/bench-qdrant.sh, and its `post` by
scripts/search_under_ingest.py; a node without auth)
"""

import json
import sys
import time
import urllib.error
import urllib.request

DEADLINE_S = 3600
REQUEST_TIMEOUT_S = 120


def post(node, collection, batch):
    """Add `batch` to `collection`; returns the node's answer (its job id under `job_id`)."""
    body = json.dumps({"documents": batch}).encode()
    deadline = time.time() + DEADLINE_S
    while True:
        req = urllib.request.Request(f"{node}/api/v1/collections/{collection}/documents", body,
                                     {"content-type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=REQUEST_TIMEOUT_S) as r:
                return json.load(r)
        except urllib.error.HTTPError as e:
            if e.code != 429:
                raise
            if time.time() > deadline:
                sys.exit(f"the node's ingest queue stayed full for {DEADLINE_S} s")
            time.sleep(float(e.headers.get("retry-after", "1")))


def live_points(node, collection):
    url = f"{node}/api/v1/collections/{collection}"
    with urllib.request.urlopen(url, timeout=REQUEST_TIMEOUT_S) as r:
        return json.load(r)["index"]["live_points"]


def main():
    node, collection, path = sys.argv[1:4]
    docs = [json.loads(l) for l in open(path)]
    for i in range(0, len(docs), 500):
        post(node, collection, docs[i:i + 500])
    deadline = time.time() + DEADLINE_S
    while (live := live_points(node, collection)) < len(docs):
        if time.time() > deadline:
            sys.exit(f"the index held {live} of {len(docs)} documents after {DEADLINE_S} s")
        time.sleep(1)


if __name__ == "__main__":
    main()
