#!/usr/bin/env python3
"""Turn the JSON lines bench/host/run.sh collected into bench/results/host.md."""
import json, os, statistics, sys
ingest_path, loads_path, out, host_ok, corpus_bytes, messages, rounds = sys.argv[1:8]
sustain_path = sys.argv[8] if len(sys.argv) > 8 else None
context = os.environ.get("CONTEXT", "")
runs = [json.loads(l) for l in open(ingest_path) if l.strip()]
host = [r for r in runs if r["consumer"] == "infinibay-host-ingest"]
pipeline = [r for r in runs if r["consumer"] == "rust-protocol-pipeline"]
node = [r for r in runs if r["consumer"].startswith("node")]
floors = {stage: [r for r in runs if r["consumer"] == f"rust-floor-{stage}"] for stage in ("framing", "syntax", "typed")}
med = lambda rs, k: statistics.median(r[k] for r in rs) if rs else 0.0
loads = [json.loads(l) for l in open(loads_path) if l.strip()]
sustains = [json.loads(l) for l in open(sustain_path) if l.strip()] if sustain_path and os.path.exists(sustain_path) else []
# The budget is the host's own ingest code; the bare protocol pipeline is shown beside it.
ours = host or pipeline
ours_name = "the host's own ingest (`infinibay bench-ingest`)" if host else "the protocol pipeline only (the host did not build)"
o_core, n_core = med(ours, "msg_per_cpu_sec"), med(node, "msg_per_cpu_sec")
lines = []
w = lines.append
w("# Host benchmarks")
w("")
w("Written by `bench/host/run.sh` (do not edit by hand; rerun it). Machine and conditions:")
w("")
w(context)
w("")
w("## 1. Ingest of ~1 KB `system_metrics`, storage stubbed: ours vs the seeds' Node watcher")
w("")
w(f"The same corpus ({int(corpus_bytes)//2000} bytes/message, 2,000 distinct messages repeated to "
  f"{int(messages):,} per round) is written by `infinibay-sim feed` over a UNIX socket to one consumer "
  f"process at a time, {rounds} rounds each, medians reported. msg/s per core = messages ÷ the consumer's "
  "own CPU seconds (user+system) from its first byte to end of stream.")
w("")
w("- **ours, host**: `infinibay bench-ingest --socket` — the code a connection task of `infinibay serve` runs "
  "per read (`ingest::ingest_read` → `Ingest::on_item`): `GuestStreamDecoder` (fast path), per-VM token bucket "
  "(rate out of reach), `sanitize`, VM status/`last_seen`/counters, the sample built and handed to the host's "
  "`StoreQueue` (no store writer: storage stubbed, the queue keeps the newest samples per VM), publish on the "
  "`InProcessBus` to one metrics subscriber; current-thread runtime (one core, like the peer's event loop) and mimalloc, as `serve`. This is the budget's figure.")
w("- **ours, protocol pipeline**: `infinibay-sim ingest` — `GuestStreamDecoder` → `sanitize` → tokio "
  "`broadcast` publish, current-thread runtime, system allocator: the protocol crate alone, for comparison.")
w("- **peer**: `bench/host/node-watcher.js` — seeds 001/003 re-implemented (buffered `toString().split('\\n')`, "
  "`JSON.parse`, `validateMessage` + `validateMetrics`, Prisma create stubbed as a resolved promise, EventEmitter emit).")
w("")
w("| consumer | msg/s per core (median) | wall msg/s | CPU s | peak RSS | rounds (msg/s per core) |")
w("| --- | ---: | ---: | ---: | ---: | --- |")
for name, rs in (("ours: host ingest", host), ("ours: protocol pipeline", pipeline), ("peer: seeds' Node watcher", node)):
    if not rs:
        w(f"| {name} | not measured | | | | |")
        continue
    w(f"| {name} | {med(rs,'msg_per_cpu_sec'):,.0f} | {med(rs,'msg_per_sec'):,.0f} | {med(rs,'cpu_secs'):.2f} | "
      f"{med(rs,'max_rss_kb')/1024:.0f} MiB | {', '.join(format(r['msg_per_cpu_sec'], ',.0f') for r in rs)} |")
w("")
ratio = o_core / n_core if n_core else 0.0
if not n_core:
    w("**Not measured in this run** (the ingest section was left out).")
else:
  w(f"**Ratio per core: {ratio:.1f}×** for {ours_name} against the peer measured in the same run (goal ≥ 10×: "
  + ("met" if ratio >= 10 else "**not met**") + ")"
  + (f"; the protocol pipeline alone: {med(pipeline,'msg_per_cpu_sec')/n_core:.1f}×." if host and pipeline and n_core else "."))
syntax_core = med(floors["syntax"], "msg_per_cpu_sec")
if n_core and syntax_core:
    w("")
    w("**The floors under it.** The same bytes to `infinibay-sim ingest --stage`, which stops early: *framing* "
      "splits lines and checks UTF-8; *syntax* adds a complete JSON syntax check (serde_json, every value skipped "
      "as it is read, nothing built: the least an ingest can do and still reject a broken line); *typed* is "
      "`GuestStreamDecoder` alone. No stage sanitises, stores or publishes.")
    w("")
    w("| floor | msg/s per core (median) | µs of CPU per message | ratio to the peer | rounds (msg/s per core) |")
    w("| --- | ---: | ---: | ---: | --- |")
    for stage, rs in floors.items():
        if rs:
            m = med(rs, "msg_per_cpu_sec")
            w(f"| {stage} | {m:,.0f} | {1e6/m:.2f} | {m/n_core:.1f}× | {', '.join(format(r['msg_per_cpu_sec'], ',.0f') for r in rs)} |")
    w(f"| *the peer* | {n_core:,.0f} | {1e6/n_core:.2f} | 1.0× | |")
    w("")
    w(f"10× the peer leaves {1e5/n_core:.2f} µs of CPU per message for everything; the syntax check alone costs "
      f"{1e6/syntax_core:.2f} µs here, so the highest ratio any ingest that rejects broken JSON could reach on this "
      f"run is {syntax_core/n_core:.1f}× before it decodes a single value"
      + (" — the 10× budget is out of reach of every such design on this run." if syntax_core < 10 * n_core else "."))
lag = sum(r.get("lagged", 0) for r in ours)
if lag:
    w(f"(The bus subscriber missed {lag:,} messages over all rounds: a tokio broadcast keeps the newest when a subscriber lags.)")
w("")

def window(l, key):
    """A simulator counter's increase over the measuring window, summed over its processes."""
    begin = sum(x["sim_totals"].get(key, 0) for x in l["sim_begin"])
    end = sum(x["sim_totals"].get(key, 0) for x in l["sim_end"])
    return end - begin

def sim_rate(l, key):
    """Per second, each simulator process over its own counters' span (its uptime delta)."""
    total = 0.0
    for b, e in zip(l["sim_begin"], l["sim_end"]):
        b, e = b["sim_totals"], e["sim_totals"]
        span = e.get("uptime_secs", 0) - b.get("uptime_secs", 0)
        if span > 0:
            total += (e.get(key, 0) - b.get(key, 0)) / span
    return total

def is_host(l):
    return l["consumer_kind"] == "infinibay serve"

def hdelta(l, key):
    """Increase of a host /healthz queue counter over the window (None when not available)."""
    try:
        return l["health_end"]["queue"][key] - l["health_begin"]["queue"][key]
    except (KeyError, TypeError):
        return None

def clean_tail(l):
    return l.get("consumer_log_tail", "").strip()[-300:].replace("|", "/").replace(chr(10), " ").replace(chr(96), "'")

def desc(l):
    d = l.get("window_secs") or l["duration"]
    return (f"{l['vms']:,} VMs @ {l['interval']} s, {l['profile']}"
            + (f", {l['flood']} flooding 64 KB ({sim_rate(l,'flood_messages'):,.0f} lines/s, "
               f"{sim_rate(l,'bytes')/1e6:,.1f} MB/s written by the sim)" if l["flood"] else "")
            + f"; sim runtime {'multi-thread x' + str(l['sim_threads']) if l['sim_threads'] else 'current-thread'}"
            + (f"; CPU steal {l['steal_pct']:.0f} %" if "steal_pct" in l else "")
            + ("" if l.get("consumer_alive", True) else
               f" — **the consumer died during the window**: `{clean_tail(l)}`"))

def fmt(v, spec=",.0f"):
    return "n/a" if v is None else format(v, spec)

def sustain_figures(l):
    """Rates over the window from /healthz queue counters and the feeder's counters."""
    d = l["window_secs"] or 1
    q0, q1 = (l.get("health_begin") or {}).get("queue", {}), (l.get("health_end") or {}).get("queue", {})
    f0, f1 = l.get("feed_begin") or {}, l.get("feed_end") or {}
    hq = lambda k: (q1[k] - q0[k]) if k in q0 and k in q1 else None
    fd = (f1.get("uptime_secs", 0) - f0.get("uptime_secs", 0)) or d
    fq = lambda k: (f1[k] - f0[k]) / fd if k in f0 and k in f1 else None
    written = hq("samples_written")
    return {
        "written_per_sec": written / d if written is not None else None,
        "queued_per_sec": (hq("samples_queued") or 0) / d,
        "coalesced": hq("samples_coalesced"), "failed": hq("samples_failed"),
        "fed_per_sec": fq("written"), "offered_per_sec": fq("offered"),
        "skipped": (f1.get("skipped", 0) - f0.get("skipped", 0)) if f0 and f1 else None,
        "host_cpu": 100 * l["host_cpu_secs"] / d, "feeder_cpu": 100 * l["feeder_cpu_secs"] / d,
        "pg_cpu": 100 * l["pg_cpu_secs"] / d,
    }

def sustain_ok(f):
    return (f["written_per_sec"] is not None and f["written_per_sec"] >= 0.98 * 50_000 and f["coalesced"] == 0
            and f["failed"] == 0 and f["skipped"] == 0)

if sustains:
    w("## 2. Sustained storage: `infinibay serve` with SQLite / PostgreSQL at 50,000 samples/s")
    w("")
    s0 = sustains[0]
    w(f"Measured like section 1, with storage on: the same corpus, pre-rendered, is fed by `infinibay-sim paced-feed` "
      f"over {s0['vms']:,} QEMU-like sockets, each VM writing its share ({s0['rate'] // s0['vms']} samples/s) every "
      f"{s0['tick_ms']} ms, {s0['rate']:,} samples/s in all, to the whole `infinibay serve` (discovery, connection "
      "tasks, ingest, the store queue, the writer thread, the real database; the per-VM token bucket raised to 1,000/s for "
      "this load, since 50 samples/s per VM exceed the default 10/s). Window "
      f"{s0['window_secs']:.0f} s after every VM is online. *Written/s* is the host's `samples_written` counter over the "
      "window (it trails *queued* by the batch in flight); *skipped* counts feeder ticks that found the previous "
      "write unread a whole tick later (the host not keeping pace). Sustained = written ≥ 98 % of 50,000/s, "
      "nothing coalesced, failed or skipped. The fleet-shaped variant (10,000 VMs each writing every sample on "
      "its own) is the `store-*` rows of the load scenarios below.")
    w("")
    w("*CPU steal*: the share of the machine's CPU time the hypervisor took during the window (`/proc/stat`); "
      "this machine is a VM, and under heavy steal the host gets much less than its 2 cores.")
    w("")
    w("| store | fed samples/s | host queued/s, written/s | coalesced, failed, feeder skipped | host CPU | PostgreSQL CPU | feeder CPU | CPU steal | host RSS / peak | sustained |")
    w("| --- | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: | --- |")
    for l in sustains:
        f = sustain_figures(l)
        w(f"| {l['store']} | {fmt(f['fed_per_sec'])} | {fmt(f['queued_per_sec'])}, {fmt(f['written_per_sec'])} | "
          f"{fmt(f['coalesced'])}, {fmt(f['failed'])}, {fmt(f['skipped'])} | {f['host_cpu']:.0f} % | "
          + (f"{f['pg_cpu']:.0f} %" if l['store'] == 'postgres' else "–")
          + f" | {f['feeder_cpu']:.0f} % | {l.get('steal_pct', 0):.0f} % | {l['host_rss_kb']/1024:.0f} / {l['host_hwm_kb']/1024:.0f} MiB | "
          + ("yes" if sustain_ok(f) else "**no**") + " |")
    w("")

hosts = [l for l in loads if is_host(l)]
drains = [l for l in loads if not is_host(l)]
d0 = loads[0]["duration"] if loads else (sustains[0]["window_secs"] if sustains else 0)

w("## Load scenarios")
w("")
w(f"Each scenario: simulators started, consumer started, settled (for the host: every VM online), then a "
  f"measuring window of {d0} s. CPU is from `/proc/PID/stat` over the window (all threads, user+system), RSS is "
  "`VmRSS` at the window's end and `VmHWM` (peak). Simulator figures are summed over its processes (10,000 VMs "
  "need two: 2 descriptors per VM against a hard RLIMIT_NOFILE of 20,000). *Sim late / coalesced*: samples "
  "whose write took longer than ¼ interval / ticks that found the previous sample still unsent (only the "
  "newest is kept: a sample the consumer never got), counted by the simulator in the window; 0 / 0 when the "
  "consumer keeps up.")
w("")
w("### The host: `infinibay serve`")
w("")
if not hosts:
    w("**Not measured: `infinibay serve` was not available when this ran** (budgets 2–4 need it). The script "
      "measures it on the next run once the host builds.")
else:
    w("Host counters are the increase of `/healthz` `queue` counters over the window (*n/a*: `/healthz` did not "
      "answer within 5 s — it pings the store, so a stalled store or an overloaded host shows up as n/a). *Stored gaps* are read back "
      "from the SQLite database: the time between consecutive stored samples of each periodic VM by host receive "
      "time (late = more than 1.5 intervals).")
    w("")
    w("| scenario | store | host CPU (% of one core) | host RSS / peak | sim samples/s | host: queued/s, written/s | host: coalesced, failed, dropped | stored rows/s, stored gaps p50 / p99 / max (ms), late | sim late / coalesced | simulator CPU |")
    w("| --- | --- | ---: | ---: | ---: | --- | --- | --- | ---: | ---: |")
    for l in hosts:
        d = l.get("window_secs") or l["duration"]
        hs = l.get("health_secs") or d
        q, wr = hdelta(l, "samples_queued"), hdelta(l, "samples_written")
        dropped = sum((hdelta(l, k) or 0) for k in ("inventories_dropped", "errors_dropped", "command_logs_dropped"))
        db = l.get("db") or {}
        stored = (f"{db['rows_per_sec']:,.0f}, {fmt(db.get('gap_p50_ms'))} / {fmt(db.get('gap_p99_ms'))} / {fmt(db.get('gap_max_ms'))}, {db.get('late_gaps')}"
                  if "rows" in db else "n/a")
        w(f"| {desc(l)} | {l['store']} | {100*l['consumer_cpu_secs']/d:.1f} % | {l['consumer_rss_kb']/1024:.0f} / {l['consumer_hwm_kb']/1024:.0f} MiB | "
          f"{sim_rate(l,'samples'):,.0f} | {fmt(q and q/hs)}, {fmt(wr and wr/hs)} | {fmt(hdelta(l,'samples_coalesced'))}, {fmt(hdelta(l,'samples_failed'))}, {dropped} | "
          f"{stored} | {window(l,'samples_late')} / {window(l,'ticks_coalesced')} | {100*l['sim_cpu_secs']/d:.1f} % ({l['sim_processes']} proc) |")
w("")
w("### Stand-in host (`infinibay-sim drain`) and the simulator's own cost")
w("")
w("`drain` runs only the protocol pipeline (connect, 0xFF + hello, decode, sanitise, publish; no discovery, "
  "storage, API, liveness, token bucket): a floor for a host's cost, not the host. *Gaps* are between "
  "consecutive `system_metrics` of one periodic VM as drain received them.")
w("")
w("| scenario | drain CPU (% of one core) | drain RSS / peak | sim samples/s | gaps p50 / p99 / max (ms), late | sim late / coalesced | simulator CPU (% of one core) | simulator RSS |")
w("| --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |")
for l in drains:
    d = l.get("window_secs") or l["duration"]
    own = l.get("consumer_own") or {}
    gaps = (f"{own['gap_p50_ms']:.0f} / {own['gap_p99_ms']:.0f} / {own['gap_max_ms']:.0f}, {own['late_gaps']}"
            if "gap_p50_ms" in own else "n/a")
    w(f"| {desc(l)} | {100*l['consumer_cpu_secs']/d:.1f} % | {l['consumer_rss_kb']/1024:.0f} / {l['consumer_hwm_kb']/1024:.0f} MiB | "
      f"{sim_rate(l,'samples'):,.0f} | {gaps} | {window(l,'samples_late')} / {window(l,'ticks_coalesced')} | "
      f"{100*l['sim_cpu_secs']/d:.1f} % ({l['sim_processes']} proc) | {l['sim_rss_kb']/1024:.0f} MiB |")
w("")

by = {l["name"]: l for l in loads}
w("## Budgets")
w("")
w("| budget | result |")
w("| --- | --- |")
if not n_core:
    w("| ingest ≥ 10× the Node watcher per core | not measured in this run |")
else:
  w(f"| ingest ≥ 10× the Node watcher per core | {ratio:.1f}× ({o_core:,.0f} vs {n_core:,.0f} msg/s per core) — "
  + ("met" if ratio >= 10 else "**not met**") + f"; {ours_name}"
  + (f"; the JSON syntax check alone reaches {syntax_core/n_core:.1f}× (section 1, floors)" if syntax_core else "") + " |")
sus = {l["store"]: l for l in sustains}
for key, store, label in (("store-sqlite", "sqlite", "SQLite storage ≥ 50,000 samples/s sustained"), ("store-pg", "postgres", "PostgreSQL ≥ 50,000 samples/s sustained")):
    l = sus.get(store)
    if l:
        f = sustain_figures(l)
        w(f"| {label} (section 2: fed like the ingest budget, {l['vms']:,} VMs) | {fmt(f['written_per_sec'])} samples/s written, "
          f"{fmt(f['coalesced'])} coalesced, {fmt(f['failed'])} failed, {fmt(f['skipped'])} feeder ticks skipped; host CPU "
          f"{f['host_cpu']:.0f} %, CPU steal {l.get('steal_pct', 0):.0f} % — " + ("met" if sustain_ok(f) else "**not met**") + " |")
    l = by.get(key)
    if not l:
        if not sus.get(store):
            w(f"| {label} | not measured |")
        continue
    label += f" (fleet-shaped: {l['vms']:,} VMs, one write per sample)"
    d = l.get("window_secs") or l["duration"]
    wr = hdelta(l, "samples_written")
    co = hdelta(l, "samples_coalesced")
    offered = sim_rate(l, "samples")
    hs = l.get("health_secs") or d
    ok = wr is not None and wr / hs >= 50_000 and co == 0
    co = fmt(co)
    w(f"| {label} | {fmt(wr and wr/hs)} samples/s written by the host ({l['vms']:,} VMs @ {l['interval']} s offered "
      f"{offered:,.0f}/s; host coalesced {co}, sim coalesced {window(l,'ticks_coalesced')}; host CPU "
      f"{100*l['consumer_cpu_secs']/d:.0f} %, sim CPU {100*l['sim_cpu_secs']/d:.0f} % of one core) — "
      + ("met" if ok else "**not met**") + " |")
l = by.get("many")
if l:
    d = l.get("window_secs") or l["duration"]; cpu = 100*l['consumer_cpu_secs']/d; peak = l['consumer_hwm_kb']/1024
    lost = (hdelta(l, "samples_coalesced") or 0) + (hdelta(l, "samples_failed") or 0) + window(l, "ticks_coalesced")
    startup = l.get("health_begin", {}).get("queue", {}).get("samples_coalesced")
    db = l.get("db") or {}
    ok = cpu <= 50 and peak <= 400 and lost == 0 and db.get("late_gaps", 0) == 0
    w(f"| {l['vms']:,} VMs @ 1 s: host ≤ 50 % of one core, ≤ 400 MB, drops nothing | {cpu:.1f} %, peak {peak:.0f} MiB, "
      f"{lost} samples lost (host coalesced + failed + sim coalesced), stored {fmt(db.get('rows_per_sec'))}/s, "
      f"{db.get('late_gaps','n/a')} late gaps; before the window (start-up, registering every VM) the host had "
      f"coalesced {fmt(startup)} — " + ("met" if ok else "**not met**") + " |")
else:
    w("| 10,000 VMs @ 1 s: host ≤ 50 % of one core, ≤ 400 MB, drops nothing | not measured for the host (see the drain rows for the stand-in) |")
l = by.get("flood")
if l:
    d = l.get("window_secs") or l["duration"]; peak = l['consumer_hwm_kb']/1024
    db = l.get("db") or {}
    ok = peak <= 200 and db.get("late_gaps", 1) == 0 and window(l, "ticks_coalesced") == 0
    w(f"| 1 VM flooding 64 KB + {l['vms']-1:,} @ 1 s: host ≤ 200 MB, others on time | peak {peak:.0f} MiB; others' stored gaps "
      f"p99 {fmt(db.get('gap_p99_ms'))} ms, max {fmt(db.get('gap_max_ms'))} ms, {db.get('late_gaps','n/a')} late; sim coalesced "
      f"{window(l,'ticks_coalesced')} — " + ("met" if ok else "**not met**") + " |")
else:
    w("| 1 VM flooding 64 KB + 1,000 @ 1 s: host ≤ 200 MB, others on time | not measured for the host (see the drain rows) |")
w("")
open(out, "w").write("\n".join(lines) + "\n")
