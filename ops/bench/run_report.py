#!/usr/bin/env python3
"""Turns the chat-bench results of ops/bench/run.sh into markdown (standard library only).

Usage: run_report.py RESULTS_DIR [--doc docs/BENCHMARKS.md]

RESULTS_DIR holds meta.json (the machine, versions and settings run.sh collected) and, per run,
SCENARIO__SERVER.json (chat-bench --json), .rc (its exit code), .err (its stderr) and .dead
(server processes gone after the run); a fault run also .victim (the worker killed) and .load
(`uptime` as it started). The markdown goes to stdout and, with --doc, replaces what lies between
`<!-- run.sh:begin -->` and `<!-- run.sh:end -->` in that file, and the fault scenario's between
`<!-- run.sh:fault:begin -->` and `<!-- run.sh:fault:end -->` (a section holding the markers is
appended when they are missing); a block is only replaced when its scenarios ran, and the rest of
the file is left as it is.
"""

import json
import os
import sys

BEGIN = "<!-- run.sh:begin -->"
END = "<!-- run.sh:end -->"
SECTION_TITLE = "## Chat servers compared: chatctl, Node.js socket.io, socketioxide"
FAULT_BEGIN = "<!-- run.sh:fault:begin -->"
FAULT_END = "<!-- run.sh:fault:end -->"
FAULT_TITLE = "## A worker killed under chat load: messages lost, sockets recovered"
RELOAD_BEGIN = "<!-- run.sh:reload:begin -->"
RELOAD_END = "<!-- run.sh:reload:end -->"
RELOAD_TITLE = "## Reloads and an upgrade under chat load: disconnects, messages lost"

SERVERS = ["chatctl", "chatctl-redis", "node-chat", "socketioxide-chat"]
OURS = ["chatctl", "chatctl-redis"]
LABEL = {
    "chatctl": "chatctl embedded",
    "chatctl-redis": "chatctl redis",
    "node-chat": "node-chat",
    "socketioxide-chat": "socketioxide-chat",
}
# What each ratio must reach against each peer (the targets of issue 7); every ratio is written
# so that higher is better, except memory where ours/theirs must stay below the target.
TARGET = {"node-chat": 5.0, "socketioxide-chat": 1.0}


def load(results, scenario, server):
    """The run's JSON (or None), its exit code (or None when it did not run) and notes."""
    base = os.path.join(results, f"{scenario}__{server}.json")
    if not os.path.exists(base + ".rc") and not os.path.exists(base):
        return None, None, []
    notes = []
    data = None
    try:
        with open(base) as f:
            data = json.load(f)
    except (OSError, ValueError):
        pass
    rc = None
    try:
        with open(base + ".rc") as f:
            rc = int(f.read().strip() or "0")
    except (OSError, ValueError):
        pass
    if rc not in (None, 0):
        why = {1: "lost or failed", 124: "timed out", 130: "interrupted"}.get(rc, "failed")
        notes.append(f"chat-bench exit {rc} ({why})")
        try:
            with open(base + ".err") as f:
                # chat-bench's first problem lines, without its progress lines ("[  1.0s] ...")
                problems = [l.strip() for l in f if l.startswith("chat-bench:")]
            if problems:
                notes.append("first: " + problems[0].removeprefix("chat-bench: ")[:120].replace("|", "/"))
        except OSError:
            pass
    if os.path.exists(base + ".dead"):
        notes.append("a server process died")
    return data, rc, notes


def num(value, digits=0):
    if value is None:
        return "n/a"
    if isinstance(value, float) and digits:
        return f"{value:,.{digits}f}"
    return f"{round(value):,}"


def get(data, *path):
    for key in path:
        if not isinstance(data, dict) or data.get(key) is None:
            return None
        data = data[key]
    return data


def pct(value):
    return "n/a" if value is None else f"{value:,.1f} %"


def per_cpu_second(data):
    """Deliveries per second of server CPU: the throughput at equal CPU."""
    rate, cpu = get(data, "delivered_per_sec"), get(data, "cpu_percent")
    if rate is None or not cpu:
        return None
    return rate / (cpu / 100.0)


def ratio(ours, theirs):
    if ours is None or theirs is None or theirs == 0:
        return None
    return ours / theirs


def judge_higher(value, peer):
    """(text, met) for a higher-is-better ratio against the target for `peer`."""
    target = TARGET[peer]
    if value is None:
        return "n/a", None
    op = "≥" if target > 1 else ">"
    met = value >= target if target > 1 else value > target
    if met:
        return f"{value:.2f}× (target {op} {target:g}×: met)", True
    short = f"missed by {target / value:.2f}×" if value > 0 else "missed"
    return f"{value:.2f}× (target {op} {target:g}×: {short})", False


def judge_memory(value, peer):
    """(text, met) for ours÷theirs memory: at most 1/5 of Node's, below socketioxide's."""
    target = 1.0 / TARGET[peer]
    if value is None:
        return "n/a", None
    op = "≤" if TARGET[peer] > 1 else "<"
    met = value <= target if TARGET[peer] > 1 else value < target
    if met:
        return f"{value:.2f} (target {op} {target:.2f}: met)", True
    return f"{value:.2f} (target {op} {target:.2f}: missed, {value / target:.2f}× over)", False


def table(header, rows):
    out = ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return out


def status(rc, notes, d=None):
    """The run column: ok, or what went wrong (chat-bench's exit, its counts, its first error)."""
    if rc is None:
        return "not run"
    if rc == 0:
        return "; ".join(["ok"] + notes)
    counts = []
    for key, what in (("connect_failed", "not connected"), ("lost", "lost"), ("duplicates", "duplicated"), ("errors", "errors")):
        if (d or {}).get(key):
            counts.append(f"{num(d[key])} {what}")
    return "; ".join(notes + counts)


def collect(results, scenario, servers):
    runs = {}
    for server in servers:
        data, rc, notes = load(results, scenario, server)
        if rc is not None or data is not None:
            data = data or {}
            if data.get("connected") == 0:
                # Nothing connected: its zeros are not figures.
                data = {k: data.get(k) for k in ("scenario", "clients", "connected", "connect_failed", "errors")}
            runs[server] = (data, rc, notes)
    return runs


def ratio_lines(runs, figure, judge, what, verdicts):
    """One line per (ours, peer) pair with the ratio `figure(ours, theirs)` judged; each
    judgement is also appended to `verdicts` for the scenario's one-line verdict."""
    lines = []
    for ours in OURS:
        for peer in TARGET:
            if ours in runs and peer in runs:
                value = figure(runs[ours][0], runs[peer][0])
                # A figure may say why it cannot be compared (a string), or give its own
                # judgement (text, met), instead of a number.
                if isinstance(value, str):
                    text, met = value, None
                elif isinstance(value, tuple):
                    text, met = value
                else:
                    text, met = judge(value, peer)
                lines.append(f"- {what}, {LABEL[ours]} vs {LABEL[peer]}: {text}")
                verdicts.append((f"{what} vs {LABEL[peer]} ({LABEL[ours]})", text, met))
    return lines


def verdict(verdicts):
    judged = [v for v in verdicts if v[2] is not None]
    if not judged:
        return ["", "**Verdict:** no figures to compare (see the run column)."]
    missed = [f"{what} {text.split(': ', 1)[-1].rstrip(')')}" for what, text, met in judged if not met]
    head = f"**Verdict:** {len(judged) - len(missed)} of {len(judged)} targets met"
    if missed:
        head += "; missed: " + "; ".join(missed)
    unjudged = len(verdicts) - len(judged)
    if unjudged:
        head += f"; {unjudged} not decided (see above)"
    return ["", head + "."]


def probe(d):
    """The idle run's closing check: one message from the first member of every room."""
    sent = get(d, "sent")
    if not sent:
        return "n/a"
    return f"{num(get(d, 'delivered'))} / {num(get(d, 'expected'))} ({num(sent)} rooms)"


def section_idle(runs, meta):
    verdicts = []
    out = [f"### (a) Idle connections: memory per connection ({meta.get('idle_clients')} clients, rooms of 10, {meta.get('idle_ramp', '?')} new a second, held {meta.get('idle_hold')})", ""]
    rows = []
    for server, (d, rc, notes) in runs.items():
        per = get(d, "rss_per_connection_bytes")
        rows.append([
            LABEL[server],
            f"{num(get(d, 'connected'))} / {num(get(d, 'clients'))}",
            num(get(d, "connect_failed")),
            f"{per / 1024:,.1f} KiB" if per is not None else "n/a",
            f"{num(get(d, 'rss_before_kib'))} KiB → {num(get(d, 'rss_connected_kib'))} KiB",
            num(get(d, "connect_time_ms")),
            probe(d),
            (f"{d['split_processes']} chat-bench processes; " if d.get("split_processes") else "") + status(rc, notes, d),
        ])
    out += table(["server", "connected / clients", "failed", "memory per connection", "server RSS before → connected", "connect all (ms)", "one message per room: delivered / owed", "run"], rows)
    fd_limit = int(meta.get("fd_limit") or 0)
    idle_clients = int(meta.get("idle_clients") or 0)
    if fd_limit and idle_clients > fd_limit:
        out += ["", f"{idle_clients} clients exceed the descriptor limit of one process ({fd_limit}): socketioxide-chat (one process) cannot hold them, nor {meta.get('workers')} workers more than {meta.get('workers')} × {fd_limit}; where fewer than all connected, the row shows how far the server got, and this size could not be run in full on this machine."]
    out += ["", "Memory: ours ÷ theirs, lower is better (server RSS growth per connection, every process of the server summed):", ""]
    def memory(o, t):
        held = lambda d: (get(d, "connected") or 0) >= 0.99 * (get(d, "clients") or 0)
        if not held(o):
            return f"missed: ours held only {num(get(o, 'connected'))} of {num(get(o, 'clients'))} clients", False
        if not held(t):
            return f"not decided: the peer held only {num(get(t, 'connected'))} of {num(get(t, 'clients'))} clients"
        return ratio(get(o, "rss_per_connection_bytes"), get(t, "rss_per_connection_bytes"))

    out += ratio_lines(runs, memory, judge_memory, "memory per connection", verdicts)
    out += verdict(verdicts)
    return out


def section_chat(runs, meta, title):
    verdicts = []
    out = [title, ""]
    rows = []
    for server, (d, rc, notes) in runs.items():
        pcs = per_cpu_second(d)
        rows.append([
            LABEL[server],
            f"{num(get(d, 'connected'))} / {num(get(d, 'clients'))}",
            num(get(d, "sent")),
            f"{num(get(d, 'delivered'))} / {num(get(d, 'expected'))}",
            num(get(d, "lost")),
            num(get(d, "duplicates")),
            num(get(d, "errors")),
            num(get(d, "delivered_per_sec")),
            num(get(d, "latency_ms", "p50"), 1),
            num(get(d, "latency_ms", "p99"), 1),
            num(get(d, "latency_ms", "max"), 1),
            pct(get(d, "cpu_percent")),
            num(pcs),
            status(rc, notes, d),
        ])
    out += table(["server", "connected / clients", "sent", "delivered / expected", "lost", "dup", "errors", "delivered msg/s", "p50 ms", "p99 ms", "max ms", "server CPU (% of a core)", "deliveries per CPU-second", "run"], rows)
    out += ["", "Throughput at equal CPU (deliveries per CPU-second, ours ÷ theirs) and p99 latency (theirs ÷ ours), higher is better:", ""]
    out += ratio_lines(runs, lambda o, t: ratio(per_cpu_second(o), per_cpu_second(t)), judge_higher, "throughput per CPU", verdicts)
    out += ratio_lines(runs, lambda o, t: ratio(get(t, "latency_ms", "p99"), get(o, "latency_ms", "p99")), judge_higher, "p99 latency", verdicts)
    out += verdict(verdicts)
    return out


def best_step(d):
    """The step chat-bench's best_rate_under_limit (deliveries/s) comes from."""
    best = get(d, "best_rate_under_limit")
    for step in d.get("steps") or []:
        if best is not None and step.get("delivered_per_sec") == best:
            return step
    return None


def delivered_steps(d):
    """The steps in which anything was delivered: a step of a dead server has no latency."""
    return [s for s in d.get("steps") or [] if s.get("delivered")]


def limit_reached(d, limit_ms):
    return any((s.get("p99_ms") or 0) > limit_ms for s in delivered_steps(d))


def section_fanout(runs, meta):
    verdicts = []
    limit = meta.get("p99_limit", "200ms")
    limit_ms = float(limit[:-2]) if limit.endswith("ms") else float(limit.rstrip("s")) * 1000
    out = [f"### (c) Fan-out: one room of {meta.get('fanout_clients')} ({meta.get('fanout_ramp', '?')} joins a second), one sender at rising rates ({meta.get('fanout_rates')} msg/s, {meta.get('fanout_step')} each, after {meta.get('fanout_warmup', '?')} of warm-up) until p99 > {limit}", ""]
    rows = []
    for server, (d, rc, notes) in runs.items():
        step = best_step(d) or {}
        steps = ", ".join(
            f"{num(s.get('rate'))}: {num(s.get('p99_ms'), 1) if s.get('delivered') else '–'}"
            + (f" ({num(s.get('lost'))} lost)" if s.get("lost") else "")
            for s in d.get("steps") or []
        )
        if limit_reached(d, limit_ms):
            reached = "yes"
        elif delivered_steps(d):
            reached = "no: every rate passed"
        else:
            reached = "n/a: nothing delivered"
        rows.append([
            LABEL[server],
            f"{num(get(d, 'connected'))} / {num(get(d, 'clients'))}",
            num(step.get("rate")),
            num(get(d, "best_rate_under_limit")),
            num(step.get("p99_ms"), 1),
            reached,
            steps or "n/a",
            pct(get(d, "cpu_percent")),
            status(rc, notes, d),
        ])
    out += table(["server", "connected / clients", "best step (msg/s sent)", "deliveries/s at it", "p99 ms at it", f"p99 passed {limit}", "p99 ms per step (rate: p99)", "server CPU", "run"], rows)
    out += ["", "Most deliveries per second under the p99 limit, ours ÷ theirs (higher is better; when neither server passed the limit, both only show the highest rate tried), and p99 at the highest rate both passed, theirs ÷ ours:", ""]
    def deliveries(o, t):
        if not delivered_steps(o):
            return "missed: ours delivered nothing", False
        if not delivered_steps(t):
            return "not decided: the peer delivered nothing"
        if not limit_reached(o, limit_ms) and not limit_reached(t, limit_ms) and o.get("steps") and t.get("steps"):
            return "not decided: neither passed the p99 limit (raise FANOUT_RATES)"
        return ratio(get(o, "best_rate_under_limit"), get(t, "best_rate_under_limit"))

    out += ratio_lines(runs, deliveries, judge_higher, "fan-out deliveries/s", verdicts)

    def common_p99(o, t):
        rate = min((best_step(o) or {}).get("rate") or 0, (best_step(t) or {}).get("rate") or 0)
        p99 = lambda d: next((s.get("p99_ms") for s in delivered_steps(d) if s.get("rate") == rate), None)
        return ratio(p99(t), p99(o)) if rate else None

    out += ratio_lines(runs, common_p99, judge_higher, "p99 latency at the common rate", verdicts)
    out += verdict(verdicts)
    return out


def section_storm(runs, meta):
    verdicts = []
    out = [f"### (d) Connection storm: {meta.get('storm_clients')} clients at once (`--ramp 0`)", ""]
    rows = []
    for server, (d, rc, notes) in runs.items():
        rows.append([
            LABEL[server],
            f"{num(get(d, 'connected'))} / {num(get(d, 'clients'))}",
            num(get(d, "connect_failed")),
            num(get(d, "errors")),
            num(get(d, "connect_time_ms")),
            f"{num(get(d, 'connect_p50_ms'), 1)} / {num(get(d, 'connect_p99_ms'), 1)} / {num(get(d, 'connect_max_ms'), 1)}",
            status(rc, notes, d),
        ])
    out += table(["server", "connected / clients", "failed", "errors", "time until all connected (ms)", "per client p50 / p99 / max (ms)", "run"], rows)
    out += ["", "Time until all connected, theirs ÷ ours (higher is better):", ""]
    out += ratio_lines(runs, lambda o, t: ratio(get(t, "connect_time_ms"), get(o, "connect_time_ms")), judge_higher, "storm time", verdicts)
    out += verdict(verdicts)
    return out


def read_text(path):
    try:
        with open(path) as f:
            return f.read().strip()
    except OSError:
        return None


def run_header(meta):
    """What a reader needs to repeat a scenario of its own block: when, the code, the machine, the command."""
    return [
        f"Run of {meta['started']} – {meta['finished']}, produced by `ops/bench/run.sh` (chat-bench, crates/bench),",
        f"commit `{meta['commit']}`; {meta['chatctl']}; node {meta['node']}, socket.io {meta['socketio']},",
        f"@socket.io/redis-adapter {meta['redis_adapter']}. Machine: `nproc` = {meta['nproc']}, {meta['cpu']}, {meta['ram']} RAM;",
        f"load average {meta.get('load_start', '?')} at the start of the whole run, {meta['load']} at its end.",
        "",
        "Command:",
        "",
        f"    {meta['command']}",
        "",
    ]


# The columns a run with a fault or a reload shows for every server (see disruption_cells).
DISRUPTION_COLUMNS = ["connected / clients", "sent", "delivered / owed", "lost", "dup", "never reached the server"]


def disruption_cells(d, base):
    """What the clients went through, and the load as the run started: the cells of the fault and
    reload tables, in the order of DISRUPTION_COLUMNS, then reconnections, sockets and times back."""
    back = get(d, "back_after_ms") or {}
    return {
        "head": [
            f"{num(get(d, 'connected'))} / {num(get(d, 'clients'))}",
            num(get(d, "sent")),
            f"{num(get(d, 'delivered'))} / {num(get(d, 'expected'))}",
            num(get(d, "lost")),
            num(get(d, "duplicates")),
            num(get(d, "never_arrived")),
            f"{num(get(d, 'reconnects'))} ({num(get(d, 'reconnects_failed'))} failed)",
            f"{num(get(d, 'sockets_recovered'))} / {num(get(d, 'sockets_not_recovered'))}",
            f"{num(back.get('p50'), 1)} / {num(back.get('p99'), 1)} / {num(back.get('max'), 1)}",
        ],
        "load": (read_text(base + ".load") or "?").split("load average:")[-1].strip(),
    }


def section_fault(results, meta, servers):
    """The fault scenario, with what a reader needs to repeat it: command, commit, load."""
    runs = collect(results, "fault", servers)
    out = run_header(meta) + [
        f"### {meta.get('fault_clients')} clients in rooms of {meta.get('chat_room_size')}, {meta.get('chat_rate')} msg/s each, "
        f"{meta.get('fault_duration')}; `kill -9` of one of {meta.get('workers')} workers {meta.get('fault_after')} into it",
        "",
    ]
    rows = []
    for server, (d, rc, notes) in runs.items():
        base = os.path.join(results, f"fault__{server}.json")
        cells = disruption_cells(d, base)
        rows.append([
            LABEL[server],
            *cells["head"],
            f"pid {read_text(base + '.victim') or '?'}: {(get(d, 'fault', 'exit') or 'not run')}",
            cells["load"],
            status(rc, notes, d),
        ])
    out += table(["server", *DISRUPTION_COLUMNS, "clients reconnected", "sockets recovered / not", "back after the kill p50 / p99 / max (ms)",
                  "worker killed", "load (1, 5, 15 min) as it started", "run"], rows)
    out += [
        "",
        "- *lost*: deliveries owed (every other member of the sender's room when the message was sent) and never",
        "  received, recoveries' replays included; *dup*: received twice. *Never reached the server*: messages a",
        "  client wrote on its connection as its worker died, neither echoed back to the sender (`myMessage`) nor",
        "  replayed to it by a recovery; a client's emit without an ack has no delivery guarantee, so they are not",
        "  owed to anyone. *Sockets*: each client has two (`/chat_infra`, `/chat_com`); recovered means the server",
        "  answered the reconnection with the same pid; a socket not recovered rejoins its room, and what it missed",
        "  meanwhile counts as lost. *Back*: from the client seeing its connection end until both its sockets were",
        "  connected again (and, when not recovered, its room joined again).",
        "- chat-bench reconnects as socket.io-client does with recovery: the pid of each CONNECT reply and the last",
        "  event's offset go back in the next CONNECT; first retry after 100 ms, doubling to 1 s.",
        "- node-chat runs with socket.io's `connectionStateRecovery` on. Its @socket.io/redis-adapter (the adapter",
        "  node:cluster deployments use) extends socket.io's base Adapter, which adds no offsets and keeps no",
        "  sessions: the clients get a pid but never an offset, so no socket can be recovered there. The Redis",
        "  streams adapter, which does recover, was not tried (it loses sessions of a node that dies: its issues",
        "  #27, #48).",
        "- The figures are about losses and times on a shared 2-core machine under the load shown: the times carry",
        "  that noise; the counts of lost and recovered do not depend on it.",
    ]
    return out


def section_reload(results, meta, servers):
    """The reload scenario: what a deploy costs the users of each stack."""
    runs = collect(results, "reload", servers)
    out = run_header(meta) + [
        f"### {meta.get('reload_clients')} clients in rooms of {meta.get('chat_room_size')}, {meta.get('chat_rate')} msg/s each, "
        f"{meta.get('reload_duration')}; {meta.get('reload_count')} reloads one after the other from {meta.get('reload_after')} into it",
        "",
    ]
    rows = []
    for server, (d, rc, notes) in runs.items():
        base = os.path.join(results, f"reload__{server}.json")
        times = (read_text(base + ".times") or "").splitlines()
        steps = ", ".join(
            f"{kind} {int(ms) / 1000:.1f} s" for kind, _, ms, _ in (line.split() for line in times if len(line.split()) == 4)
        )
        cells = disruption_cells(d, base)
        rows.append([LABEL[server], *cells["head"], steps or "none recorded", cells["load"], status(rc, notes, d)])
    out += table(["server", *DISRUPTION_COLUMNS, "clients disconnected (reconnected)", "sockets recovered / not", "back after a disconnect p50 / p99 / max (ms)",
                  "each reload (and upgrade) took", "load (1, 5, 15 min) as it started", "run"], rows)
    out += [
        "",
        "- chatctl: `chatctl reload APP` (every worker replaced, one at a time), then `chatctl upgrade APP` when the",
        "  binary has it (a new master from the executable on disk, given the listening socket). node-chat: SIGUSR2 to",
        "  its cluster primary, a rolling restart as PM2's `reload` does it for a cluster app (start the replacement,",
        "  wait until it is ready, stop the old worker), with socket.io's `connectionStateRecovery` on.",
        "- *clients disconnected*: connections a client saw end and opened again; the goal is 0. *lost*, *dup*,",
        "  *never reached the server*, *sockets* and *back* as in the fault scenario above.",
    ]
    return out


def render_block(results, section):
    """A scenario with a block of its own (fault, reload)."""
    with open(os.path.join(results, "meta.json")) as f:
        meta = json.load(f)
    servers = [s for s in SERVERS if s in meta.get("servers", "").split()]
    out = []
    if meta.get("quick") == "1":
        out += ["**QUICK run (`--quick`): tiny smoke-test sizes, not benchmark figures.**", ""]
    out += section(results, meta, servers)
    return "\n".join(out).rstrip() + "\n"


def render(results):
    with open(os.path.join(results, "meta.json")) as f:
        meta = json.load(f)
    servers = [s for s in SERVERS if s in meta.get("servers", "").split()]
    quick = meta.get("quick") == "1"
    out = []
    if quick:
        out += ["**QUICK run (`--quick`): tiny smoke-test sizes, not benchmark figures.**", ""]
    out += [
        f"Run of {meta['started']} – {meta['finished']}, produced by `ops/bench/run.sh` (chat-bench, crates/bench).",
        "",
        "| | |",
        "| --- | --- |",
        f"| Machine | `nproc` = {meta['nproc']}, {meta['cpu']}, {meta['ram']} RAM, {meta['kernel']} |",
        f"| Load | load average {meta.get('load_start', '?')} at the start, {meta['load']} at the end (other work on the machine shows here) |",
        f"| Code | commit `{meta['commit']}`; {meta['chatctl']}; {meta['rustc']} |",
        f"| Peers | node {meta['node']}, socket.io {meta['socketio']}, @socket.io/sticky {meta['sticky']}, @socket.io/redis-adapter {meta['redis_adapter']}, redis (npm) {meta['redis_client']}; socketioxide {meta['socketioxide']} |",
        f"| Redis | {meta['redis']} (`--save '' --appendonly no`), one instance for chatctl redis and node-chat, emptied before each server starts; its own CPU and memory are not counted for either |",
        f"| Workers | chatctl and node-chat: {meta['workers']} each (chatctl's scheduling: `{meta.get('chatctl_scheduling', '?')}`); socketioxide-chat: one process (tokio multi-thread runtime) |",
        f"| Descriptors | {meta['fd_limit']} per process |",
        "",
        "Command:",
        "",
        f"    {meta['command']}",
        "",
        "Each scenario runs against a freshly started server. Memory and CPU are those of every process of the",
        "server (chatctl: master + workers; node-chat: the cluster primary, which runs @socket.io/sticky, + workers), sampled by chat-bench",
        "(`--pid`). Targets: at most 1/5 of Node's memory per idle connection, at least 5× Node's delivered",
        "messages per second at equal CPU, a p99 latency at least 5× lower, and ahead of socketioxide everywhere.",
        "",
        "How the peers are set up, and what limits their figures:",
        "",
        "- Every server runs without a per-socket message limit, keeps the last 50 messages of each room as history,",
        "  and looks the session of the signed cookie up on each namespace connection (node-chat in Redis, socketioxide-chat",
        "  in memory, chatctl in the master or in Redis). socketioxide-chat buffers 4 096 packets per client, as chatctl does",
        "  (its default of 128 drops packets, pings included, when a join in a large room sends everyone the member list).",
        "  chatctl's caps on logins per address and on handshakes not yet joined (2 048 per worker, 64 per address) are",
        "  lifted: the load comes from 16 addresses, the storm opens 5 000 at once, and the peers have no such caps.",
        "  Joins: chatctl sends the member list to the joiner only and `user_entered` to the",
        "  others; the peers send the whole list to the whole room on every join (the book's protocol).",
        "- node-chat answers `POST /login` with `Connection: close`: @socket.io/sticky forwards the later chunks of a",
        "  connection to its worker as strings, which corrupts websocket frames when a client upgrades the connection it",
        "  logged in on (browsers open a new connection for a websocket anyway).",
        "- node-chat with long-polling: @socket.io/sticky learns which worker owns a session from a message the worker sends",
        "  after the handshake; a client whose first POST reaches the primary before that message goes to the least-loaded",
        "  worker and gets HTTP 400 (`Session ID unknown`). Such clients count as not connected.",
        "- The descriptor limit is per process: socketioxide-chat (one process) cannot hold more connections than it, and a",
        f"  chat-bench process holds at most 15 000 clients; run.sh splits larger idle runs over several chat-bench processes.",
        "",
    ]
    for scenario in meta.get("scenarios", "").split():
        if scenario in ("fault", "reload"):
            continue  # blocks of their own: render_block
        runs = collect(results, scenario, servers)
        if scenario == "idle":
            out += section_idle(runs, meta)
        elif scenario == "chat":
            out += section_chat(runs, meta, f"### (b) Chat: {meta.get('chat_clients')} clients in rooms of {meta.get('chat_room_size')}, {meta.get('chat_rate')} msg/s each, {meta.get('chat_duration')}")
        elif scenario == "fanout":
            out += section_fanout(runs, meta)
        elif scenario == "storm":
            out += section_storm(runs, meta)
        elif scenario == "polling":
            out += section_chat(runs, meta, f"### (e) Long-polling clients: {meta.get('poll_clients')} clients (`--transport polling`) in rooms of 10, 1 msg/s each, {meta.get('poll_duration')}")
        out.append("")
    idle_clients = int(meta.get("idle_clients") or 0)
    if idle_clients > 15000:
        out += [f"The idle run of {idle_clients} clients was split over several chat-bench processes (each may hold 15 000 with this machine's descriptor limit); its memory figures are run.sh's own reading of the servers' RSS once `ss` counted every connection established.", ""]
    return "\n".join(out).rstrip() + "\n"


def write_doc(path, body, begin=BEGIN, end_marker=END, title=SECTION_TITLE):
    with open(path) as f:
        text = f.read()
    block = f"{begin}\n{body}{end_marker}"
    start, end = text.find(begin), text.find(end_marker)
    if start != -1 and end > start:
        text = text[:start] + block + text[end + len(end_marker):]
    else:
        text = text.rstrip("\n") + f"\n\n{title}\n\n{block}\n"
    with open(path, "w") as f:
        f.write(text)


def main(argv):
    if len(argv) < 2:
        sys.exit(__doc__)
    with open(os.path.join(argv[1], "meta.json")) as f:
        scenarios = json.load(f).get("scenarios", "").split()
    doc = argv[argv.index("--doc") + 1] if "--doc" in argv else None
    if any(s not in ("fault", "reload") for s in scenarios):
        body = render(argv[1])
        print(body)
        if doc:
            write_doc(doc, body)
    if "fault" in scenarios:
        body = render_block(argv[1], section_fault)
        print(body)
        if doc:
            write_doc(doc, body, FAULT_BEGIN, FAULT_END, FAULT_TITLE)
    if "reload" in scenarios:
        body = render_block(argv[1], section_reload)
        print(body)
        if doc:
            write_doc(doc, body, RELOAD_BEGIN, RELOAD_END, RELOAD_TITLE)


if __name__ == "__main__":
    main(sys.argv)
