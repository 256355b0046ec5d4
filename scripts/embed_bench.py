"""Side-by-side embedding benchmark, Python half: builds the inputs, runs sentence-transformers
(PyTorch, CPU) and ONNX Runtime fp32 (an ONNX export of the same model), writes inputs and figures.

Usage: embed_bench.py MODEL_DIR SUMMARIES_JSON OUT_DIR THREADS
Writes OUT_DIR/embed-inputs.json and OUT_DIR/embed-python.json.
"""
import json
import os
import random
import sys
import time

import numpy as np


def build_inputs(summaries_path, tokenizer):
    with open(summaries_path) as f:
        items = sorted(json.load(f).values(), key=lambda v: v["title"])
    extracts = [v["extract"].strip() for v in items if v.get("extract", "").strip()]
    count = lambda t: len(tokenizer(t, truncation=False)["input_ids"])
    passages, cur = [], ""
    for e in extracts:
        nxt = (cur + " " + e).strip()
        n = count(nxt)
        if n > 256:
            if cur and 200 <= count(cur) <= 256:
                passages.append(cur)
            cur = e if count(e) <= 256 else ""
        else:
            cur = nxt
        if len(passages) >= 2000:
            break
    queries = []
    for v in items:
        words = (v["title"] + " " + v.get("description", "")).split()
        if len(words) >= 5:
            queries.append(" ".join(words[:15]))
        if len(queries) >= 2000:
            break
    rng = random.Random(7)
    mixed = passages[:700] + queries[:700] + extracts[:600]
    rng.shuffle(mixed)
    return {"passages": passages, "queries": queries, "mixed": mixed,
            "passage_tokens": float(np.mean([count(p) for p in passages])),
            "query_tokens": float(np.mean([count(q) for q in queries])),
            "mixed_tokens": float(np.mean([min(count(m), 256) for m in mixed]))}


def latency(fn, texts):
    out = []
    for t in texts:
        s = time.perf_counter()
        fn([t])
        out.append((time.perf_counter() - s) * 1000)
    out.sort()
    return {"p50_ms": out[len(out) // 2], "p95_ms": out[int(len(out) * 0.95)]}


def rate(fn, texts):
    fn(texts[:64])  # warm-up
    s = time.perf_counter()
    fn(texts)
    return len(texts) / (time.perf_counter() - s)


def main():
    model_dir, summaries, out_dir, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
    import torch
    torch.set_num_threads(threads)
    import onnxruntime as ort
    from sentence_transformers import SentenceTransformer, models
    from transformers import AutoModel, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model_dir)
    inputs = build_inputs(summaries, tok)
    with open(os.path.join(out_dir, "embed-inputs.json"), "w") as f:
        json.dump(inputs, f)
    print(f"inputs: {len(inputs['passages'])} passages ({inputs['passage_tokens']:.0f} tokens), "
          f"{len(inputs['queries'])} queries ({inputs['query_tokens']:.1f} tokens), {len(inputs['mixed'])} mixed",
          flush=True)

    word = models.Transformer(model_dir, max_seq_length=256)
    pool = models.Pooling(word.get_word_embedding_dimension(), pooling_mode="mean")
    st = SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")
    st_fn = lambda texts: st.encode(texts, batch_size=32, convert_to_numpy=True)

    onnx_path = os.path.join(out_dir, "minilm-fp32.onnx")
    if not os.path.exists(onnx_path):
        hf = AutoModel.from_pretrained(model_dir).eval()

        class Encoder(torch.nn.Module):
            def __init__(self, m):
                super().__init__()
                self.m = m

            def forward(self, input_ids, attention_mask, token_type_ids):
                return self.m(input_ids=input_ids, attention_mask=attention_mask,
                              token_type_ids=token_type_ids).last_hidden_state

        enc = tok(["export me"], return_tensors="pt")
        torch.onnx.export(
            Encoder(hf).eval(), (enc["input_ids"], enc["attention_mask"], enc["token_type_ids"]), onnx_path,
            input_names=["input_ids", "attention_mask", "token_type_ids"], output_names=["last_hidden_state"],
            dynamic_axes={k: {0: "batch", 1: "seq"} for k in ["input_ids", "attention_mask", "token_type_ids", "last_hidden_state"]},
            opset_version=17, dynamo=False)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    sess = ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"])

    def ort_fn(texts):
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        out = [None] * len(texts)
        for s in range(0, len(order), 32):
            idx = order[s:s + 32]
            enc = tok([texts[i] for i in idx], padding=True, truncation=True, max_length=256, return_tensors="np")
            h = sess.run(None, {k: enc[k].astype(np.int64) for k in ["input_ids", "attention_mask", "token_type_ids"]})[0]
            m = enc["attention_mask"][..., None].astype(np.float32)
            v = (h * m).sum(1) / np.clip(m.sum(1), 1e-9, None)
            v /= np.linalg.norm(v, axis=1, keepdims=True)
            for j, i in enumerate(idx):
                out[i] = v[j]
        return out

    # accuracy check of the export against sentence-transformers
    a = st_fn(inputs["queries"][:16])
    b = np.stack(ort_fn(inputs["queries"][:16]))
    cos = float(np.min(np.sum(a * b, axis=1)))

    result = {"threads": threads, "onnx_min_cosine_to_st": cos, "engines": {}}
    for name, fn in [("sentence-transformers", st_fn), ("onnxruntime-fp32", ort_fn)]:
        r = {k: rate(fn, inputs[k]) for k in ["passages", "queries", "mixed"]}
        r["query_latency"] = latency(fn, inputs["queries"][:200])
        result["engines"][name] = r
        print(name, json.dumps(r), flush=True)
    with open(os.path.join(out_dir, "embed-python.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
