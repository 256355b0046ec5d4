"""p50/p95 of sequential searches against one node, with a bearer credential or none.
Usage: bench_auth.py BASE [TOKEN] N"""
import http.client, json, sys, time, urllib.parse
base, token, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
u = urllib.parse.urlparse(base)
c = http.client.HTTPConnection(u.hostname, u.port)
h = {"content-type": "application/json"}
if token != "-":
    h["authorization"] = "Bearer " + token
qs = ["tower in Paris", "plants and light", "iron lattice", "chemical energy"]
lat = []
for i in range(n + 50):
    body = json.dumps({"query": qs[i % 4], "top_k": 5})
    t = time.perf_counter()
    c.request("POST", "/api/v1/collections/wiki/search", body, h)
    r = c.getresponse(); r.read()
    assert r.status == 200, r.status
    if i >= 50:
        lat.append((time.perf_counter() - t) * 1000)
lat.sort()
print(f"p50 {lat[len(lat)//2]:.3f} ms  p95 {lat[int(len(lat)*0.95)]:.3f} ms  n {len(lat)}")
