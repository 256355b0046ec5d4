#!/usr/bin/env python3
"""Per-kind unavailability from shoal-chaos reports (--report FILE): for each fault kind, how
many times it was injected and the median and worst longest stretch with no successful write
and with no successful search, as the Markdown table of docs/chaos.md. Delays are split into
those within the cluster's timers (under 60 ms) and beyond.

    python3 scripts/chaos-table.py docs/chaos-report.json [more reports...]
"""
import json
import re
import statistics
import sys


def kind_name(fault):
    kind = "".join(part.capitalize() for part in fault["kind"].split("_"))
    if fault["kind"] == "delay":
        m = re.match(r"(\d+) ms", fault.get("detail", ""))
        if m:
            kind += " < 60 ms" if int(m.group(1)) < 60 else " >= 60 ms"
    return kind


def main(paths):
    rows = {}
    order = []
    totals = {"faults": 0, "documents": 0, "anomalies": 0, "seconds": 0.0, "operations": 0}
    for path in paths:
        with open(path) as f:
            reports = json.load(f)
        for r in reports:
            totals["documents"] += r.get("documents_checked", 0)
            totals["anomalies"] += len(r.get("anomalies", []))
            totals["seconds"] += r.get("duration_s", 0.0)
            ops = r.get("operations", {})
            if isinstance(ops, dict):
                for v in ops.values():
                    if isinstance(v, dict):
                        totals["operations"] += sum(x for x in v.values() if isinstance(x, int))
                    elif isinstance(v, list):
                        totals["operations"] += sum(x for x in v if isinstance(x, int))
            for fault in r["faults"]:
                totals["faults"] += 1
                k = kind_name(fault)
                if k not in rows:
                    rows[k] = ([], [])
                    order.append(k)
                rows[k][0].append(fault["writes_unavailable_ms"])
                rows[k][1].append(fault["searches_unavailable_ms"])

    def fmt(v):
        return f"{v:,.0f}"

    print("| fault | times | writes: median, worst (ms) | searches: median, worst (ms) |")
    print("|---|---|---|---|")
    known = [
        "KillLeader", "KillFollower", "PauseLeader", "PauseFollower", "IsolateLeader",
        "PartitionMinority", "Bridge", "OneWayFromLeader", "PacketLoss", "Delay < 60 ms",
        "Delay >= 60 ms", "GracefulRestart", "WipeFollower", "RemoveAndRejoin", "DiskFull",
        "ActorPanic", "ClockJump",
    ]
    order.sort(key=lambda k: known.index(k) if k in known else len(known))
    for k in order:
        w, s = rows[k]
        print(
            f"| {k} | {len(w)} | {fmt(statistics.median(w))}, {fmt(max(w))} "
            f"| {fmt(statistics.median(s))}, {fmt(max(s))} |"
        )
    print()
    print(
        f"{totals['faults']} faults over {totals['seconds']:,.0f} s, "
        f"{totals['operations']:,} operations recorded, "
        f"{totals['documents']:,} documents checked on every node, "
        f"{totals['anomalies']} anomalies"
    )


if __name__ == "__main__":
    if len(sys.argv) < 2:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    main(sys.argv[1:])
