#!/usr/bin/env python3
"""What the host stored in a measuring window, read back from its SQLite database.

usage: db_window.py DB BEGIN_MS END_MS INTERVAL_S FLOOD
Prints one JSON object: rows stored with a receive time in [BEGIN, END), rows/s, and for the
periodic VMs (the FLOOD busiest VMs left out) the gaps between consecutive stored samples of
each VM, by host receive time: p50/p99/max and how many exceed 1.5 intervals.
"""
import json
import sqlite3
import sys

db, begin, end, interval, flood = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
con = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
# The store keys samples by `vm_key` (since its migration 0003) or by `vm_id` (before).
columns = {row[1] for row in con.execute("PRAGMA table_info(metric_samples)")}
vm_column = "vm_key" if "vm_key" in columns else "vm_id"
rows = con.execute(
    f"SELECT {vm_column}, at FROM metric_samples WHERE at >= ? AND at < ? ORDER BY {vm_column}, at",
    (begin, end),
).fetchall()
per_vm = {}
for vm, at in rows:
    per_vm.setdefault(vm, []).append(at)
busiest = sorted(per_vm, key=lambda v: len(per_vm[v]), reverse=True)[:flood]
gaps = []
for vm, ats in per_vm.items():
    if vm in busiest:
        continue
    gaps.extend(b - a for a, b in zip(ats, ats[1:]))
gaps.sort()
pick = lambda p: gaps[min(len(gaps) - 1, int(p * len(gaps)))] if gaps else None
print(json.dumps({
    "rows": len(rows),
    "rows_per_sec": len(rows) / max((end - begin) / 1000, 1e-9),
    "vms_with_rows": len(per_vm),
    "gap_count": len(gaps),
    "gap_p50_ms": pick(0.5),
    "gap_p99_ms": pick(0.99),
    "gap_max_ms": gaps[-1] if gaps else None,
    "late_gaps": sum(1 for g in gaps if g > 1500 * interval),
    "busiest_vm_rows": [len(per_vm[v]) for v in busiest],
}))
