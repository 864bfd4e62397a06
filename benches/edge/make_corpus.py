#!/usr/bin/env python3
"""Writes the request corpus of the load benchmark's visitors profile into a directory.

    benches/edge/make_corpus.py OUT_DIR [--clients 250000] [--seed 18]

Files (read by benches/loadgen and benches/edge/visitors.lua; '#' lines are comments):

  user-agents.tsv  weight<TAB>User-Agent: every distinct user agent of the uap-core test corpora
                   in tests/data/uap-core/ (test_ua.yaml and test_device.yaml, real user agents
                   collected by the uap-core project), weighted as described below.
  languages.tsv    weight<TAB>Accept-Language (an empty value: the header is not sent).
  paths.txt        100,000 request targets with identifiers (/ad/<id>/click?c=<n>, ...), ad
                   identifiers drawn from a Zipf law, so the file itself carries the frequencies:
                   a request takes one line at random.
  clients.txt      --clients distinct public client addresses, 80% IPv4 and 20% IPv6, in random
                   order. A load generator walks the file in order, one address per request.
  corpus.txt       what was written: counts, class shares, the heaviest user agents.

User-agent weights: each user agent is put in one class by its text (desktop Chrome, mobile
Chrome, mobile Safari, ..., bots, HTTP libraries); each class gets a share of requests close to
the public browser-share statistics of 2025 (CLASS_SHARES below, rounded), and inside a class the
user agents, newest browser version first (ties in a seeded random order), get Zipf weights
1/rank, so each class has a few heavy, recent user agents and a long tail, as real traffic does. Everything is deterministic for a given seed.
Python 3 standard library only.
"""

import argparse
import ipaddress
import os
import random
import re
import sys

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
UAP = os.path.join(REPO, "tests", "data", "uap-core")

# Share of requests per user-agent class, percent (rounded from StatCounter's 2025 browser and
# platform shares: about 60% of page views from phones, Chrome ~65%, Safari ~18%, Edge ~5%, ...;
# in-app browsers, other browsers, bots and HTTP libraries take the rest).
CLASS_SHARES = [
    ("chrome-mobile", 38.0),
    ("chrome-desktop", 22.0),
    ("safari-mobile", 16.0),
    ("safari-desktop", 3.0),
    ("edge", 5.0),
    ("samsung", 3.0),
    ("in-app", 3.0),
    ("firefox", 2.5),
    ("other-browser", 2.5),
    ("opera", 2.0),
    ("other", 1.5),
    ("bot", 1.0),
    ("library", 0.5),
]

CLASSIFIERS = [
    ("bot", re.compile(r"bot\b|bot/|crawl|spider|slurp|bingpreview|facebookexternalhit|"
                       r"mediapartners|\+https?://", re.I)),
    ("library", re.compile(r"^(curl|wget|python|java/|go-http|okhttp|apache-httpclient|libwww|"
                           r"aws-sdk|axios|node-fetch|php|ruby|dalvik)", re.I)),
    ("in-app", re.compile(r"FBAN|FBAV|Instagram|Pinterest|Twitter|Line/|MicroMessenger|"
                          r"Snapchat|GSA/|; wv\)|WebView", re.I)),
    ("samsung", re.compile(r"SamsungBrowser")),
    ("edge", re.compile(r"Edg(e|A|iOS)?/")),
    ("opera", re.compile(r"OPR/|Opera|OPiOS")),
    ("firefox", re.compile(r"Firefox/|FxiOS")),
    ("chrome-mobile", re.compile(r"(Chrome|CriOS)/[\d.]+ .*Mobile|CriOS/|Android.*Chrome/")),
    ("chrome-desktop", re.compile(r"Chrome/")),
    ("safari-mobile", re.compile(r"(iPhone|iPad|iPod).*Version/[\d.]+.*Safari/")),
    ("safari-desktop", re.compile(r"Macintosh.*Version/[\d.]+.*Safari/")),
    ("other-browser", re.compile(r"^Mozilla/")),
]

# Accept-Language values with their weights (per mille); "" = no header.
LANGUAGES = [
    ("en-US,en;q=0.9", 300), ("en-GB,en;q=0.9", 60), ("de-DE,de;q=0.9,en;q=0.8", 70),
    ("de", 15), ("fr-FR,fr;q=0.9,en-US;q=0.8,en;q=0.7", 55), ("es-ES,es;q=0.9", 40),
    ("es-419,es;q=0.9", 25), ("pt-BR,pt;q=0.9,en-US;q=0.8,en;q=0.7", 40), ("it-IT,it;q=0.9", 30),
    ("nl-NL,nl;q=0.9,en-US;q=0.8,en;q=0.7", 20), ("pl-PL,pl;q=0.9,en-US;q=0.8,en;q=0.7", 20),
    ("ru-RU,ru;q=0.9,en-US;q=0.8,en;q=0.7", 25), ("tr-TR,tr;q=0.9", 15), ("ja-JP,ja;q=0.9", 25),
    ("zh-CN,zh;q=0.9", 30), ("zh-TW,zh;q=0.9,en-US;q=0.8,en;q=0.7", 8), ("ko-KR,ko;q=0.9", 12),
    ("sv-SE,sv;q=0.9,en-US;q=0.8,en;q=0.7", 8), ("da-DK,da;q=0.9", 5), ("fi-FI,fi;q=0.9", 4),
    ("nb-NO,nb;q=0.9,no;q=0.8,nn;q=0.7,en-US;q=0.6,en;q=0.5", 5), ("cs-CZ,cs;q=0.9", 6),
    ("sq-AL,sq;q=0.9", 2), ("ar-SA,ar;q=0.9,en;q=0.8", 8), ("hi-IN,hi;q=0.9,en;q=0.8", 10),
    ("id-ID,id;q=0.9", 10), ("vi-VN,vi;q=0.9", 6), ("uk-UA,uk;q=0.9,ru;q=0.8", 6),
    ("el-GR,el;q=0.9", 4), ("he-IL,he;q=0.9,en-US;q=0.8", 3), ("*", 8), ("en", 30),
    ("", 50),
]

# Request targets: template, weight (percent). {ad}: an ad identifier (Zipf), {c}: a campaign,
# {slot}: a placement, {r}: a cache-busting random number, {s}: a script identifier.
PATHS = [
    ("/ad/{ad}/click?c={c}", 30),
    ("/ad/{ad}/view?c={c}&slot={slot}", 30),
    ("/px/{ad}.gif?e=imp&c={c}&r={r}", 15),
    ("/s/{s}.js", 10),
    ("/c/{c}/landing?utm_source=news&utm_medium=cpc&id={ad}", 10),
    ("/", 5),
]

# Public IPv6 prefixes' first groups (RIR allocations: RIPE 2a0x, APNIC 240x, ARIN 260x, LACNIC
# 280x, AFRINIC 2c0f; plus 2001 and 2003).
V6_FIRST = [0x2001, 0x2003, 0x2400, 0x2401, 0x2404, 0x2405, 0x2408, 0x2409, 0x2600, 0x2601,
            0x2602, 0x2603, 0x2604, 0x2605, 0x2607, 0x2800, 0x2801, 0x2803, 0x2804, 0x2a00,
            0x2a01, 0x2a02, 0x2a03, 0x2a04, 0x2a05, 0x2a0a, 0x2c0f]


def read_user_agents(path):
    """The user_agent_string values of a uap-core test file (quoted YAML scalars)."""
    out = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            line = line.strip()
            if not line.startswith("- user_agent_string:"):
                continue
            v = line.split(":", 1)[1].strip()
            if v.startswith("'") and v.endswith("'") and len(v) >= 2:
                v = v[1:-1].replace("''", "'")
            elif v.startswith('"') and v.endswith('"') and len(v) >= 2:
                v = v[1:-1].replace('\\"', '"').replace("\\\\", "\\")
            out.append(v)
    return out


def header_safe(v):
    """Printable ASCII only, no leading/trailing space: a valid header value for every tool."""
    return v == v.strip() and v != "" and all(0x20 <= ord(c) < 0x7f for c in v)


def classify(ua):
    for name, rx in CLASSIFIERS:
        if rx.search(ua):
            return name
    return "other"


VERSION = re.compile(r"(?:Chrome|CriOS|Version|Edg[A-Za-z]*|Firefox|FxiOS|SamsungBrowser|OPR|"
                     r"Opera)/(\d+)")


def version(ua):
    """The highest browser major version named in the user agent (0: none)."""
    return max((int(m) for m in VERSION.findall(ua)), default=0)


def public_v4(rng):
    while True:
        a = ipaddress.IPv4Address(rng.getrandbits(32))
        if a.is_global and not a.is_multicast:
            return str(a)


def public_v6(rng):
    groups = [rng.choice(V6_FIRST)] + [rng.randint(1, 0xffff) for _ in range(7)]
    return str(ipaddress.IPv6Address(":".join(f"{g:x}" for g in groups)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--clients", type=int, default=250_000)
    ap.add_argument("--seed", type=int, default=18)
    args = ap.parse_args()
    rng = random.Random(args.seed)
    os.makedirs(args.out, exist_ok=True)

    # User agents.
    seen, uas = set(), []
    for name in ("test_ua.yaml", "test_device.yaml"):
        for ua in read_user_agents(os.path.join(UAP, name)):
            if header_safe(ua) and "\t" not in ua and ua not in seen:
                seen.add(ua)
                uas.append(ua)
    by_class = {name: [] for name, _ in CLASS_SHARES}
    for ua in uas:
        by_class[classify(ua)].append(ua)
    weighted = []
    total_share = sum(s for _, s in CLASS_SHARES if by_class[_])
    scale = 1_000_000_000
    for name, share in CLASS_SHARES:
        members = by_class[name]
        if not members:
            continue
        rng.shuffle(members)
        members.sort(key=version, reverse=True)
        h = sum(1.0 / r for r in range(1, len(members) + 1))
        for rank, ua in enumerate(members, start=1):
            w = max(1, round(scale * share / total_share / rank / h))
            weighted.append((w, name, ua))
    with open(os.path.join(args.out, "user-agents.tsv"), "w", encoding="ascii") as f:
        f.write(f"# weight<TAB>user agent; {len(weighted)} distinct, generated by "
                f"benches/edge/make_corpus.py --seed {args.seed}\n")
        for w, _, ua in weighted:
            f.write(f"{w}\t{ua}\n")

    with open(os.path.join(args.out, "languages.tsv"), "w", encoding="ascii") as f:
        f.write("# weight<TAB>Accept-Language (empty: no header)\n")
        for v, w in LANGUAGES:
            f.write(f"{w}\t{v}\n")

    # Paths: ad identifiers 1..50,000 with Zipf(1.1) popularity.
    ads = list(range(1, 50_001))
    ad_weights = [1.0 / (i ** 1.1) for i in ads]
    templates = [t for t, _ in PATHS]
    template_weights = [w for _, w in PATHS]
    n_paths = 100_000
    chosen_ads = rng.choices(ads, weights=ad_weights, k=n_paths)
    chosen_templates = rng.choices(templates, weights=template_weights, k=n_paths)
    with open(os.path.join(args.out, "paths.txt"), "w", encoding="ascii") as f:
        f.write("# request targets, one per line; a request takes one at random\n")
        for t, ad in zip(chosen_templates, chosen_ads):
            f.write(t.format(ad=ad, c=rng.randint(1, 500), slot=rng.randint(1, 12),
                             r=rng.randint(100_000_000, 999_999_999),
                             s=rng.randint(1, 40)) + "\n")

    # Clients: distinct addresses, 80% IPv4, 20% IPv6.
    n6 = args.clients // 5
    n4 = args.clients - n6
    v4, v6 = set(), set()
    while len(v4) < n4:
        v4.add(public_v4(rng))
    while len(v6) < n6:
        v6.add(public_v6(rng))
    clients = sorted(v4) + sorted(v6)
    rng.shuffle(clients)
    with open(os.path.join(args.out, "clients.txt"), "w", encoding="ascii") as f:
        f.write(f"# {len(clients)} distinct client addresses ({n4} IPv4, {n6} IPv6), "
                "one per request in this order\n")
        for c in clients:
            f.write(c + "\n")

    total_w = sum(w for w, _, _ in weighted)
    with open(os.path.join(args.out, "corpus.txt"), "w", encoding="utf-8") as f:
        f.write(f"seed {args.seed}\n")
        f.write(f"user agents: {len(weighted)} distinct (uap-core test_ua.yaml and "
                "test_device.yaml)\n")
        f.write("class            agents   share of requests\n")
        for name, share in CLASS_SHARES:
            cw = sum(w for w, c, _ in weighted if c == name)
            f.write(f"  {name:15s} {len(by_class[name]):6d}   {100.0 * cw / total_w:5.1f}%\n")
        f.write("heaviest user agents (share of requests):\n")
        for w, name, ua in sorted(weighted, reverse=True)[:10]:
            f.write(f"  {100.0 * w / total_w:5.2f}%  {name:15s} {ua[:110]}\n")
        f.write(f"clients: {len(clients)} distinct ({n4} IPv4, {n6} IPv6)\n")
        f.write(f"paths: {n_paths} lines, {len(set(chosen_ads))} distinct ad identifiers\n")
        f.write(f"languages: {len(LANGUAGES)} values\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
