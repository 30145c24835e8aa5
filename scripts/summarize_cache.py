#!/usr/bin/env python3
"""Renders scripts/bench_cache.sh's runs.csv: medians per cell and target,
and the ratios the cache goals are stated in."""
import csv
import statistics
import sys
from collections import defaultdict

rows = list(csv.DictReader(open(sys.argv[1])))
cells = defaultdict(lambda: defaultdict(list))
for r in rows:
    cells[(r["workload"], r["mode"], int(r["clients"]))][r["target"]].append(r)
targets = ["direct", "pgsift-nocache", "pgsift-memory", "pgsift-redis"]


def med(rs, k):
    return statistics.median(float(r[k]) for r in rs)


print("| workload | -M | clients | target | req/s (median) | p50 ms | p95 ms | ÷ direct (req/s) |")
print("|---|---|---|---|---|---|---|---|")
for cell in sorted(cells):
    base = med(cells[cell]["direct"], "tps") if cells[cell]["direct"] else None
    for t in targets:
        rs = cells[cell][t]
        if not rs:
            continue
        tps = med(rs, "tps")
        ratio = f"{tps / base:.2f}" if base else ""
        print(f"| {cell[0]} | {cell[1]} | {cell[2]} | {t} | {tps:.0f} | {med(rs, 'p50_ms'):.3f} | {med(rs, 'p95_ms'):.3f} | {ratio} |")
print()
print("Goals: memory hit ≥ 3 × direct, redis hit ≥ 1.5 × direct (req/s); N+1 page at 1 client ≤ 0.5 × direct latency.")
for cell in sorted(cells):
    c = cells[cell]
    if not c["direct"]:
        continue
    if cell[0] == "blog_nplus1":
        for t in ("pgsift-memory", "pgsift-redis", "pgsift-nocache"):
            if c[t]:
                # latency of a page = 1 / req/s at one client
                ratio = med(c["direct"], "tps") / med(c[t], "tps")
                print(f"- {cell[0]} -M {cell[1]} c{cell[2]}: {t} page latency ÷ direct = {ratio:.2f}")
    else:
        for t, goal in (("pgsift-memory", 3.0), ("pgsift-redis", 1.5)):
            if c[t]:
                ratio = med(c[t], "tps") / med(c["direct"], "tps")
                verdict = "met" if ratio >= goal else "NOT met"
                print(f"- {cell[0]} -M {cell[1]} c{cell[2]}: {t} ÷ direct = {ratio:.2f} (goal {goal}: {verdict})")
