#!/usr/bin/env python3
"""Helpers of benches/edge/run.sh (Python 3 standard library only).

    report.py foreign --root PID --seconds S   CPU used by everything outside PID's process tree
    report.py summary RESULTS_DIR              the summary table of a run, from results.tsv

`foreign` prints "PCT top", PCT the percent of one core used during S seconds by processes
that are not PID or under it (from /proc/stat, so short-lived processes and kernel threads
count too), and the busiest such processes.

`summary` groups the rows of results.tsv by profile, target, protocol and mode, and prints
medians over rounds, the spread of the rate ((max - min) / median), the median of the
per-round ratios to nginx (the same round, profile, protocol and mode), the access-log check
and the issue's goals.
"""

import argparse
import os
import statistics
import sys
import time

HZ = os.sysconf("SC_CLK_TCK")


def proc_table():
    """pid -> (ppid, ticks, comm) for every process."""
    out = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        comm = s[s.find("(") + 1:s.rfind(")")]
        f = s[s.rfind(")") + 2:].split()
        out[int(d)] = (int(f[1]), int(f[11]) + int(f[12]), comm)
    return out


def busy_ticks():
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    return v[0] + v[1] + v[2] + v[5] + v[6] + v[7]


def subtree(table, root):
    children = {}
    for pid, (ppid, _, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    seen, stack = set(), [root]
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        stack.extend(children.get(p, []))
    return seen


def foreign(root, seconds):
    t0, b0 = proc_table(), busy_ticks()
    start = time.monotonic()
    time.sleep(seconds)
    t1, b1 = proc_table(), busy_ticks()
    wall = time.monotonic() - start
    ours = subtree(t0, root) | subtree(t1, root)
    ours_ticks = sum(t1[p][1] - t0[p][1] for p in ours if p in t0 and p in t1)
    pct = max(0.0, (b1 - b0 - ours_ticks) / HZ / wall * 100)
    busy = []
    for pid, (_, ticks, comm) in t1.items():
        if pid in ours:
            continue
        d = ticks - (t0[pid][1] if pid in t0 else 0)
        if d > 0 and pid in t0:
            busy.append((d, pid, comm))
    busy.sort(reverse=True)
    top = ", ".join(f"{comm}[{pid}] {d / HZ / wall * 100:.0f}%" for d, pid, comm in busy[:5])
    print(f"{pct:.0f} top: {top or '-'}")


def num(v):
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def med(values):
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def fmt(v, spec):
    return "-" if v is None else format(v, spec)


PROFILE_TITLES = {
    "keepalive": "keep-alive: 1 KiB answers from an nginx upstream; h2: h2load -c {conns} -m "
                 "{streams}; h1: wrk -c {conns} (HTTP/1.1 over TLS)",
    "visitors": "visitors: per-request client address (X-Forwarded-For from 127.0.0.1), user "
                "agent, Accept-Language and path from the corpus; h2: benches/loadgen; h1: "
                "{h1client}",
    "newconn": "new connections: one request per TLS connection (benches/loadgen --new-conn); "
               "full handshakes, and resumed from session tickets",
    "memory": "memory: idle TLS connections held open (benches/loadgen hold); for h2 the client "
              "preface and SETTINGS sent",
}


def summary(out_dir, noisy_pct=25.0):
    rows = []
    with open(os.path.join(out_dir, "results.tsv")) as f:
        header = f.readline().rstrip("\n").split("\t")
        for line in f:
            vals = line.rstrip("\n").split("\t")
            rows.append({k: (vals[i] if i < len(vals) else "-") for i, k in enumerate(header)})
    env = {}
    try:
        with open(os.path.join(out_dir, "env.txt")) as f:
            for line in f:
                k, _, v = line.partition(": ")
                env[k.strip()] = v.strip()
    except OSError:
        pass
    settings = {"conns": "50", "streams": "10", "h1client": "wrk and benches/edge/visitors.lua"}
    for part in env.get("duration", "").split("  "):
        k, _, v = part.partition(": ")
        if k == "conns":
            settings["conns"] = v
        elif k == "h2 streams/conn":
            settings["streams"] = v
        elif k == "h1 visitors client" and v == "loadgen":
            settings["h1client"] = "benches/loadgen"

    groups, order = {}, []
    for r in rows:
        key = (r["profile"], r["target"], r["proto"], r["mode"])
        if key not in groups:
            groups[key] = []
            order.append(key)
        groups[key].append(r)
    # nginx's value per (profile, proto, mode, round) for the ratios.
    ref_rate, ref_us, ref_mem, ref_ours = {}, {}, {}, {}
    for r in rows:
        if r["target"] == "ours":
            ref_ours[(r["profile"], r["proto"], r["mode"], r["round"])] = num(r["rate"])
    for r in rows:
        if r["target"] == "nginx":
            k = (r["profile"], r["proto"], r["mode"], r["round"])
            ref_rate[k] = num(r["rate"])
            ref_us[k] = num(r["srv_us_per_req"])
            ref_mem[k] = num(r["bytes_per_conn"])

    def ratios(rs, col, ref):
        out = []
        for r in rs:
            v = num(r[col])
            base = ref.get((r["profile"], r["proto"], r["mode"], r["round"]))
            if v is not None and base:
                out.append(v / base)
        return med(out)

    lines = []
    lines.append(f"results: {out_dir}")
    for k in ("date", "commit", "placement", "profiles", "duration"):
        if k in env:
            lines.append(f"{k}: {env[k]}")
    lines.append("values are medians over rounds; spread = (max - min) / median of the rate; "
                 "vs_nginx = median of the per-round ratios to nginx")
    summaries = {}
    for profile in ("keepalive", "visitors", "newconn", "memory"):
        keys = [k for k in order if k[0] == profile]
        if not keys:
            continue
        lines.append("")
        lines.append(PROFILE_TITLES[profile].format(**settings))
        if profile == "memory":
            lines.append(f"{'target':12s} {'proto':5s} {'conns':>6s} {'rss_before_MiB':>14s} "
                         f"{'rss_after_MiB':>13s} {'bytes/conn':>10s} {'vs_nginx':>8s} "
                         f"{'closed_early':>12s}")
        elif profile == "newconn":
            lines.append(f"{'target':12s} {'proto':5s} {'handshake':9s} {'conn/s':>8s} "
                         f"{'spread':>7s} {'p50_ms':>7s} {'p99_ms':>7s} {'err':>5s} {'srv%':>5s} "
                         f"{'lg%':>4s} {'other%':>6s} {'us/conn':>8s} {'us_vs_nginx':>11s} "
                         f"{'resumed':>8s} {'rate_vs_nginx':>13s}")
        else:
            lines.append(f"{'target':12s} {'proto':5s} {'req/s':>8s} {'spread':>7s} "
                         f"{'mean_ms':>8s} {'p50_ms':>7s} {'p99_ms':>7s} {'err':>5s} {'srv%':>5s} "
                         f"{'up%':>4s} {'lg%':>4s} {'other%':>6s} {'us/req':>7s} {'vs_nginx':>8s} "
                         f"{'us_vs_nginx':>11s} {'rss_MiB':>7s}"
                         + (f" {'clients':>8s}" if profile == "visitors" else ""))
        for key in keys:
            rs = groups[key]
            _, target, proto, mode = key
            if all(r["rate"] == "FAILED" for r in rs):
                lines.append(f"{target:12s} {proto:5s} FAILED (server did not start or answer)")
                continue
            rates = [num(r["rate"]) for r in rs if num(r["rate"]) is not None]
            m = med(rates)
            spread = ((max(rates) - min(rates)) / m * 100) if len(rates) > 1 and m else None
            err = sum(int(num(r["errors"]) or 0) for r in rs)
            c = {col: med([num(r[col]) for r in rs]) for col in
                 ("mean_ms", "p50_ms", "p99_ms", "srv_pct", "up_pct", "lg_pct", "other_pct",
                  "srv_us_per_req", "rss_kb", "conns", "rss_before_kb", "bytes_per_conn",
                  "requests", "distinct_clients")}
            resumed = []
            for r in rs:
                a, b = num(r["resumed"]), num(r["conns"])
                if a is not None and b:
                    resumed.append(a / b)
            vs = ratios(rs, "rate", ref_rate)
            us_vs = ratios(rs, "srv_us_per_req", ref_us)
            summaries[key] = dict(c, rate=m, vs=vs, us_vs=us_vs, err=err,
                                  mem_vs=ratios(rs, "bytes_per_conn", ref_mem))
            if profile == "memory":
                lines.append(
                    f"{target:12s} {proto:5s} {fmt(c['conns'], '6.0f')} "
                    f"{fmt(c['rss_before_kb'] and c['rss_before_kb'] / 1024, '14.1f')} "
                    f"{fmt(c['rss_kb'] and c['rss_kb'] / 1024, '13.1f')} "
                    f"{fmt(c['bytes_per_conn'], '10.0f')} "
                    f"{fmt(summaries[key]['mem_vs'], '8.2f')} {err:12d}")
            elif profile == "newconn":
                lines.append(
                    f"{target:12s} {proto:5s} {mode:9s} {fmt(m, '8.0f')} "
                    f"{fmt(spread, '6.1f') + '%' if spread is not None else '-':>7s} "
                    f"{fmt(c['p50_ms'], '7.2f')} {fmt(c['p99_ms'], '7.2f')} {err:5d} "
                    f"{fmt(c['srv_pct'], '5.0f')} {fmt(c['lg_pct'], '4.0f')} "
                    f"{fmt(c['other_pct'], '6.0f')} {fmt(c['srv_us_per_req'], '8.1f')} "
                    f"{fmt(us_vs, '11.2f')} "
                    f"{fmt(med(resumed) and med(resumed) * 100, '7.1f') + '%' if resumed else '-':>8s} "
                    f"{fmt(vs, '13.2f')}")
            else:
                extra = ""
                if profile == "visitors":
                    extra = f" {fmt(c['distinct_clients'], '8.0f')}"
                lines.append(
                    f"{target:12s} {proto:5s} {fmt(m, '8.0f')} "
                    f"{fmt(spread, '6.1f') + '%' if spread is not None else '-':>7s} "
                    f"{fmt(c['mean_ms'], '8.3f')} {fmt(c['p50_ms'], '7.3f')} "
                    f"{fmt(c['p99_ms'], '7.3f')} {err:5d} {fmt(c['srv_pct'], '5.0f')} "
                    f"{fmt(c['up_pct'], '4.0f')} {fmt(c['lg_pct'], '4.0f')} "
                    f"{fmt(c['other_pct'], '6.0f')} {fmt(c['srv_us_per_req'], '7.1f')} "
                    f"{fmt(vs, '8.2f')} {fmt(us_vs, '11.2f')} "
                    f"{fmt(c['rss_kb'] and c['rss_kb'] / 1024, '7.1f')}{extra}")
    lines.append("")
    lines.append("srv% = CPU of the server under test (its process tree, /proc/PID/stat utime+"
                 "stime), up% = upstream nginx (and redis-server), lg% = load generator, other% ="
                 " everything else on the machine; 100% = one core. us/req, us/conn = server CPU"
                 " microseconds per completed request or connection. rss = server's resident "
                 "memory after the run. err: failed requests and non-2xx answers, summed over "
                 "rounds. closed_early (memory) = idle connections not open at the end of the "
                 "hold (never opened, or closed by the server).")

    # Access-log check: every completed request has its line.
    lines.append("")
    lost = []
    checked = 0
    for r in rows:
        lg, rq = num(r["logged"]), num(r["requests"])
        if lg is None or rq is None or r["profile"] == "memory":
            continue
        checked += 1
        if lg < rq:
            lost.append(r)
    if checked == 0:
        lines.append("access log: not checked (no profile with requests ran)")
    elif lost:
        lines.append(f"access log: {len(lost)} of {checked} runs logged FEWER lines than "
                     "requests completed:")
        for r in lost:
            lines.append(f"  {r['target']} {r['profile']} {r['proto']} {r['mode']} r{r['round']}"
                         f": logged={r['logged']} requests={r['requests']}")
    else:
        lines.append(f"access log: in all {checked} measured runs every server logged at least "
                     "as many lines as requests completed (the surplus: requests in flight when "
                     "the client stopped)")
    if checked:
        lines.append("access-log lines per run (logged / completed):")
    for r in rows:
        if r["profile"] != "memory" and num(r["logged"]) is not None:
            lines.append(f"  r{r['round']} {r['profile']:9s} {r['target']:12s} {r['proto']:3s} "
                         f"{r['mode']:8s} logged={r['logged']} requests={r['requests']}")

    # The issue's goals, for webprom-edge (target "ours").
    def g(profile, target, proto, mode="-"):
        return summaries.get((profile, target, proto, mode))

    goals = []

    def verdict(ok):
        return "-" if ok is None else ("met" if ok else "NOT met")

    for proto in ("h2", "h1"):
        o, n, h = g("keepalive", "ours", proto), g("keepalive", "nginx", proto), \
            g("keepalive", "haproxy", proto)
        if o and o["vs"] is not None:
            goals.append(f"keep-alive {proto}: {o['vs']:.2f}x nginx (goal >= 1.25): "
                         f"{verdict(o['vs'] >= 1.25)}")
        if o and h and o["rate"] and h["rate"]:
            goals.append(f"keep-alive {proto}: {o['rate']:.0f} vs HAProxy {h['rate']:.0f} req/s "
                         f"(goal: ahead): {verdict(o['rate'] > h['rate'])}")
        if o and o["p99_ms"] is not None:
            peers = [(nm, x["p99_ms"]) for nm, x in (("nginx", n), ("HAProxy", h))
                     if x and x["p99_ms"] is not None]
            if peers:
                ok = all(o["p99_ms"] <= v for _, v in peers)
                goals.append(f"keep-alive {proto}: p99 {o['p99_ms']:.2f} ms vs "
                             + ", ".join(f"{nm} {v:.2f}" for nm, v in peers)
                             + f" (goal: at or below both): {verdict(ok)}")
    for proto in ("h2", "h1"):
        o = g("visitors", "ours", proto)
        if o and o["vs"] is not None:
            goals.append(f"visitors {proto}: {o['vs']:.2f}x nginx (goal >= 1.0): "
                         f"{verdict(o['vs'] >= 1.0)}")
    for proto in ("h2", "h1"):
        for mode in ("full", "resumed"):
            o, n = g("newconn", "ours", proto, mode), g("newconn", "nginx", proto, mode)
            if o and n and o["srv_us_per_req"] and n["srv_us_per_req"]:
                goals.append(f"new connections {proto} {mode}: {o['srv_us_per_req']:.0f} vs nginx "
                             f"{n['srv_us_per_req']:.0f} us of server CPU per connection (goal: "
                             f"at or below): {verdict(o['srv_us_per_req'] <= n['srv_us_per_req'])}")
    for proto in ("h2", "h1"):
        o, n = g("memory", "ours", proto, "idle"), g("memory", "nginx", proto, "idle")
        if o and n and o["bytes_per_conn"] is not None and n["bytes_per_conn"] is not None:
            goal = " (goal: at or below)" if proto == "h2" else " (no goal)"
            line = (f"memory per idle {proto} connection: {o['bytes_per_conn']:.0f} vs nginx "
                    f"{n['bytes_per_conn']:.0f} bytes{goal}")
            if proto == "h2":
                line += f": {verdict(o['bytes_per_conn'] <= n['bytes_per_conn'])}"
            goals.append(line)
    for key in order:
        if key[1] == "ours-global" and key[0] != "memory":
            r = ratios(groups[key], "rate", ref_ours)
            if r is not None:
                goals.append(f"global rate-limit tier, {key[0]} {key[2]}: {r:.2f}x webprom-edge "
                             f"without it (goal: within 10%): {verdict(r >= 0.9)}")
    for proto in ("h2", "h1"):
        o = g("visitors", "ours", proto)
        if o and o["rss_kb"]:
            goals.append(f"webprom-edge RSS after the visitors profile ({proto} run): "
                         f"{o['rss_kb'] / 1024:.1f} MiB")
    if goals:
        lines.append("")
        lines.append("goals (webprom-edge = ours, against the same round's peers):")
        lines.extend("  " + x for x in goals)
        noisy = [r for r in rows
                 if num(r["other_pct"]) is not None and num(r["other_pct"]) > noisy_pct]
        if noisy:
            lines.append(f"  CAUTION: in {len(noisy)} of {len(rows)} kept runs other processes used "
                         f"more than {noisy_pct:g}% of a core (other%): the verdicts above are "
                         "unreliable; rerun on a quiet machine")
    try:
        with open(os.path.join(out_dir, "foreign.txt")) as f:
            busy = f.read().strip()
        if busy:
            lines.append("")
            lines.append("other processes were busy during the run (foreign.txt):")
            lines.extend("  " + x for x in busy.splitlines()[:20])
    except OSError:
        pass
    print("\n".join(lines))


def main():
    ap = argparse.ArgumentParser()
    sub = ap.add_subparsers(dest="cmd", required=True)
    f = sub.add_parser("foreign")
    f.add_argument("--root", type=int, required=True)
    f.add_argument("--seconds", type=float, default=1.0)
    s = sub.add_parser("summary")
    s.add_argument("dir")
    s.add_argument("--noisy-pct", type=float, default=25.0,
                   help="a kept run whose other%% is above this makes the goal verdicts unreliable")
    a = ap.parse_args()
    if a.cmd == "foreign":
        foreign(a.root, a.seconds)
    else:
        summary(a.dir, a.noisy_pct)
    return 0


if __name__ == "__main__":
    sys.exit(main())
