#!/usr/bin/env python3
"""Search latency with one client, idle and while an ingest runs, measured by `wrk`.

Starts a release `shoal` (no auth, a data directory under bench-data/), loads 500 Wikipedia lead
summaries into `wiki`, then alternates: `wrk` (1 thread, 1 connection, the node's query cache
off, so that every search embeds its query) searches `wiki` for SECS seconds idle, then again while 1,500 other
summaries are ingested into `load`. Prints client-side p50/p95/p99 of each phase and their ratio.

Usage: scripts/search_under_ingest.py [--rounds N] [--seconds S] [--bin PATH]
(after scripts/fetch-model.sh, scripts/fetch-bench-data.sh and a release build; wrk from Debian's
package). Environment variables are passed to the node (e.g. SHOAL_THREADS__QUERY_SLICE_US=0).
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request

from ingest_jsonl import post

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORDINGS = ['what is known about', 'tell me more on', 'facts on', 'history of', 'describe',
            'explain', 'summary of', 'who or what is']


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument('--rounds', type=int, default=3)
    ap.add_argument('--seconds', type=int, default=5)
    ap.add_argument('--bin', default=os.path.join(ROOT, 'target/release/shoal'))
    ap.add_argument('--port', type=int, default=18123)
    ap.add_argument('--server-timings', action='store_true',
                    help="also print the percentiles of each answer's own timings (took_ms, "
                         "embed_ms, index_ms)")
    args = ap.parse_args()
    data = os.path.join(ROOT, 'bench-data/search-under-ingest')
    shutil.rmtree(data, ignore_errors=True)
    base = f'http://127.0.0.1:{args.port}'
    env = dict(os.environ)
    env.setdefault('RUST_LOG', 'warn')
    # Every search embeds its query: a phase sends more searches than it has texts, and the
    # query cache would answer the repeats without the embedding that ingest competes with.
    env.setdefault('SHOAL_MODEL__QUERY_CACHE_SIZE', '0')
    node = subprocess.Popen([args.bin, 'serve', '--listen', f'127.0.0.1:{args.port}',
                             '--data-dir', data, '--model',
                             os.path.join(ROOT, 'models/all-MiniLM-L6-v2'), '--insecure-no-auth'],
                            env=env, stderr=subprocess.DEVNULL)
    try:
        run(args, base)
    finally:
        node.kill()
        node.wait()
        shutil.rmtree(data, ignore_errors=True)


def req(base, method, path, body=None):
    r = urllib.request.Request(base + path, method=method,
                               data=None if body is None else json.dumps(body).encode(),
                               headers={'content-type': 'application/json'})
    with urllib.request.urlopen(r, timeout=60) as f:
        return json.loads(f.read() or b'null')


def wait_until(cond, what, limit=300):
    deadline = time.time() + limit
    while not cond():
        if time.time() > deadline:
            sys.exit(f'timed out waiting for {what}')
        time.sleep(0.1)


def run(args, base):
    def up():
        try:
            return req(base, 'GET', '/health')['status'] == 'ok'
        except OSError:
            return False
    wait_until(up, 'the node to start', 120)
    with open(os.path.join(ROOT, 'bench-data/summaries_en-us.json')) as f:
        articles = json.load(f)
    docs = [{'id': t[:200], 'text': v['extract']} for t, v in list(articles.items())[:500 + 1500 * args.rounds]]
    req(base, 'PUT', '/api/v1/collections/wiki')
    req(base, 'PUT', '/api/v1/collections/load')

    def done(job):
        return req(base, 'GET', f'/api/v1/jobs/{job}')['state'] != 'running'
    job = post(base, 'wiki', docs[:500])['job_id']
    wait_until(lambda: done(job), 'the first ingest')
    titles = [d['id'] for d in docs]
    lua = os.path.join(ROOT, 'bench-data/search-under-ingest.lua')

    def measure(k):
        # new texts each phase
        bodies = [json.dumps({'query': f'{WORDINGS[(i // len(titles) + k) % len(WORDINGS)]} '
                                       f'{titles[i % len(titles)]}', 'top_k': 10})
                  for i in range(8000)]
        with open(lua, 'w') as f:
            f.write('bodies={\n' + ',\n'.join('[=[' + b + ']=]' for b in bodies) + '}\ni=0\n')
            f.write('request=function() i=i%#bodies+1 return wrk.format("POST",'
                    '"/api/v1/collections/wiki/search",{["Content-Type"]="application/json"},'
                    'bodies[i]) end\n')
            if args.server_timings:
                # each answer's own timings (the handler's time, its embed and index steps)
                f.write('local out=io.open("' + lua + '.times","w")\n'
                        'response=function(status,headers,body) '
                        'local t=body:match(\'"took_ms":([%d%.eE+-]+)\') '
                        'local e=body:match(\'"embed_ms":([%d%.eE+-]+)\') '
                        'local x=body:match(\'"index_ms":([%d%.eE+-]+)\') '
                        'if t then out:write(t,"\\t",e or "0","\\t",x or "0","\\n") end end\n')
            # (the timings file is flushed when wrk exits: `done` runs in another Lua state)
            f.write('done=function(s,l,r) io.write(string.format("RESULT\\t%d\\t%.3f\\t%.3f\\t'
                    '%.3f\\t%d\\n", s.requests, l:percentile(50)/1000, l:percentile(95)/1000, '
                    'l:percentile(99)/1000, s.errors.status)) end\n')
        out = subprocess.run(['wrk', '-t1', '-c1', f'-d{args.seconds}s', '-s', lua,
                              f'{base}/api/v1/collections/wiki/search'],
                             capture_output=True, text=True, check=True).stdout
        row = [line for line in out.splitlines() if line.startswith('RESULT')][0].split('\t')
        if int(row[5]) != 0:
            sys.exit(f'{row[5]} searches failed')
        if args.server_timings:
            with open(lua + '.times') as f:
                cols = list(zip(*(map(float, line.split('\t')) for line in f if line.strip())))
            def pct(xs, q):
                xs = sorted(xs)
                return xs[min(len(xs) - 1, int(q * len(xs)))]
            print('  server ' + ', '.join(
                f'{name} p50 {pct(c, .5):.2f} p95 {pct(c, .95):.2f} p99 {pct(c, .99):.2f}'
                for name, c in zip(('took', 'embed', 'index'), cols)) + ' ms', flush=True)
        return int(row[1]), float(row[2]), float(row[3]), float(row[4])

    k = 0
    for rnd in range(args.rounds):
        n, a50, a95, a99 = measure(k)
        k += 1
        off = 500 + 1500 * rnd
        jobs = [post(base, 'load', docs[off + i * 500: off + (i + 1) * 500])['job_id']
                for i in range(3)]
        # the ingest under way: its first chunks stored
        wait_until(lambda: req(base, 'GET', '/api/v1/collections/load')['chunks'] > 1500 * rnd,
                   'the ingest to start')
        n2, b50, b95, b99 = measure(k)
        k += 1
        running = not done(jobs[-1])
        print(f'round {rnd}: idle n {n} p50 {a50:.2f} p95 {a95:.2f} p99 {a99:.2f} ms | '
              f'during ingest n {n2} p50 {b50:.2f} p95 {b95:.2f} p99 {b99:.2f} ms | '
              f'ratio p95 {b95 / a95:.2f}, p99 {b99 / a99:.2f}'
              f'{"" if running else " (the ingest ended before the phase did)"}', flush=True)
        for j in jobs:
            wait_until(lambda: done(j), 'the ingest')


if __name__ == '__main__':
    main()
