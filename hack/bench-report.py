#!/usr/bin/env python3
"""Writes docs/benchmarks.md and its charts from one run of hack/bench.sh.

Input: a directory holding the run's `meta.txt` (key=value lines: date, commit, machine,
load), `status.txt` (one `bench=<name> status=ok|failed|skipped reason=<text>` line per
benchmark), the benchmarks' logs `<name>.log` (their `BENCH figure=… system=… value=…
unit=…` lines are the figures) and, when present, `logins-rss.csv` (memory samples).

Usage: hack/bench-report.py RUN_DIR DOC_PATH CHART_DIR
Charts are drawn with matplotlib (Debian's python3-matplotlib, installed by hack/bench.sh).
"""

import csv
import os
import sys

# One table row: (bench, figure, Tributary's system, peer's system, what, peer, better).
ROWS = [
    ("gateway", "ingest_rate", "gateway", "rabbitmq-mqtt", "MQTT QoS 1 ingest, acknowledged after the broker's confirm", "RabbitMQ's MQTT plugin, same broker", "higher"),
    ("gateway", "ingest_rate", "gateway", "mosquitto", "MQTT QoS 1 ingest", "Mosquitto (in memory, no durability)", "higher"),
    ("gateway", "ingest_rate", "gateway", "amqp-confirms-1x1", "MQTT QoS 1 ingest, acknowledged after the broker's confirm", "the broker's confirm ceiling: an AMQP client, same queue and load, 1 connection × 1 channel (the gateway's shape)", "higher"),
    ("gateway", "ingest_rate", "gateway", "amqp-confirms-4x1", "MQTT QoS 1 ingest, acknowledged after the broker's confirm", "the broker's confirm ceiling: an AMQP client, same queue and load, 4 connections × 1 channel", "higher"),
    ("gateway", "ingest_p99", "gateway", "rabbitmq-mqtt", "publish → PUBACK latency, p99", "RabbitMQ's MQTT plugin, same broker", "lower"),
    ("gateway", "ingest_p99", "gateway", "mosquitto", "publish → PUBACK latency, p99", "Mosquitto (in memory, no durability)", "lower"),
    ("gateway", "idle_bytes_per_connection", "gateway", "mosquitto", "memory per idle MQTT connection (logged in)", "Mosquitto", "lower"),
    ("gateway", "login_rss_before", "gateway", "mosquitto", "RSS before the login burst (fresh process)", "Mosquitto, `password_file`", "lower"),
    ("gateway", "login_rss_peak", "gateway", "mosquitto", "RSS at the peak of the login burst", "Mosquitto, `password_file`", "lower"),
    ("gateway", "login_rss_after", "gateway", "mosquitto", "RSS some seconds after the login burst", "Mosquitto, `password_file`", "lower"),
    ("gateway", "login_burst_seconds", "gateway", "mosquitto", "time for the login burst (argon2id 19 MiB vs PBKDF2; failures throttled)", "Mosquitto, `password_file`", "lower"),
    ("gateway", "storm_seconds", "gateway-generated", "gateway-argon2", "reconnect storm: time until 10,000 devices are connected (device table, generated secrets, HMAC)", "the same gateway, argon2id passwords (19 MiB, 2 check slots)", "lower"),
    ("gateway", "storm_rss_peak", "gateway-generated", "gateway-argon2", "reconnect storm: the gateway's peak RSS (device table, generated secrets)", "the same gateway, argon2id passwords (19 MiB, 2 check slots)", "lower"),
    ("gateway", "command_round_trip_p50", "gateway", "rabbitmq-mqtt", "command round trip (request → device → response), p50, 1,000 connected devices", "RabbitMQ's MQTT plugin, same broker, `amq.topic`", "lower"),
    ("gateway", "command_round_trip_p99", "gateway", "rabbitmq-mqtt", "command round trip, p99, 1,000 connected devices", "RabbitMQ's MQTT plugin, same broker, `amq.topic`", "lower"),
    ("gateway", "command_round_trip_p50", "gateway", "mosquitto", "command round trip, p50, 1,000 connected devices", "Mosquitto (in memory, no durability)", "lower"),
    ("gateway", "command_round_trip_p99", "gateway", "mosquitto", "command round trip, p99, 1,000 connected devices", "Mosquitto (in memory, no durability)", "lower"),
    ("worker", "worker_rows", "worker", "copy", "worker → PostgreSQL, rows stored per second (one pod, default batch and prefetch)", "plain `COPY` of the same rows", "higher"),
    ("worker", "worker_rows", "worker", "broker-ceiling", "worker → PostgreSQL, rows stored per second (one pod, default batch and prefetch)", "bare consumer of the same broker, same prefetch, one multiple ack per quarter of it (drain ceiling)", "higher"),
] + [
    ("api", f"history_{kind}_{stat}", "api", "sql", f"history: {what}, {label}", "the same SQL, prepared, straight to PostgreSQL (same connections and concurrency)", better)
    for kind, what in [
        ("page", "a page of 100 rows of one device's day"),
        ("buckets", "one device's day in 1 h buckets"),
        ("group", "10 devices' day in 1 h buckets (`devices=`)"),
        ("prefix", "10 devices' day in 1 h buckets (`devicePrefix=`)"),
    ]
    for stat, label, better in [("p50", "p50", "lower"), ("p99", "p99", "lower"), ("rate", "requests/s, 8 in flight", "higher")]
] + [
    ("api", "live_latency_p50", "api-sse", "amqp-consumer", "live fan-out: publish → receipt on each of 100 SSE clients, p50", "one plain AMQP consumer of the same exchange", "lower"),
    ("api", "live_latency_p99", "api-sse", "amqp-consumer", "live fan-out: publish → receipt on each of 100 SSE clients, p99", "one plain AMQP consumer of the same exchange", "lower"),
    ("api", "live_delivered", "api-sse", "amqp-consumer", "live fan-out: messages delivered of those published, every client", "one plain AMQP consumer of the same exchange", "higher"),
    ("api", "live_api_cpu", "api-sse", None, "live fan-out: the API's CPU (% of one core) while 100 SSE clients receive 100 msg/s", None, "lower"),
    ("api", "live_api_rss", "api-sse", None, "live fan-out: the API's RSS after the run", None, "lower"),
] + [
    ("autoscale", "autoscale_decision", "tributary-poll5", "keda-hpa", "backlog → scale decision (poll 5 s, default)", "KEDA 30 s poll + HPA 15 s sync (computed mean)", "lower"),
    ("autoscale", "autoscale_decision", "tributary-poll1", "keda-hpa", "backlog → scale decision (poll 1 s)", "KEDA 30 s poll + HPA 15 s sync (computed mean)", "lower"),
    ("autoscale", "autoscale_consuming", "tributary-poll5", "keda-hpa", "backlog → first worker pod consuming", "KEDA + HPA decision + the same pod start", "lower"),
    ("devices", "devices_settled", "tributary", "kubectl-apply", "Device fleet applied at once → every Device Ready and in its Gateway's table", "`kubectl apply --server-side` of the same manifests (the client's own time)", "lower"),
    ("devices", "devices_operator_peak_rss", "tributary", None, "operator peak RSS while the fleet reconciles", None, "lower"),
    ("devices", "devices_steady_writes", "tributary", None, "operator API writes in the minute after the fleet settled", None, "lower"),
    ("devices", "devices_steady_requests", "tributary", None, "operator API requests (all verbs) in the minute after the fleet settled", None, "lower"),
    ("scale", "scale_settled", "tributary", "kubectl-apply", "operator at scale: 10 resources × N namespaces applied at once → all Ready, children included", "`kubectl apply --server-side` of the same manifests (the client's own time)", "lower"),
    ("scale", "scale_cpu", "tributary", None, "operator at scale: CPU seconds until settled", None, "lower"),
    ("scale", "scale_peak_rss", "tributary", None, "operator at scale: peak RSS", None, "lower"),
    ("scale", "scale_settled_rss", "tributary", None, "operator at scale: RSS once settled", None, "lower"),
    ("scale", "scale_end_rss", "tributary", None, "operator at scale: RSS after the steady window", None, "lower"),
    ("scale", "scale_steady_requests", "tributary", None, "operator at scale: API requests per minute at steady state", None, "lower"),
    ("scale", "scale_steady_writes", "tributary", None, "operator at scale: API writes per minute at steady state", None, "lower"),
    ("scale", "scale_steady_cpu", "tributary", None, "operator at scale: CPU at steady state (‰ of one core)", None, "lower"),
]


def key_values(line):
    """The key=value words of one line (values without spaces)."""
    return dict(word.split("=", 1) for word in line.split() if "=" in word)


def read_figures(run_dir, benches):
    """{(figure, system): (value, unit, extras)} from every benchmark's log."""
    figures = {}
    for bench in benches:
        path = os.path.join(run_dir, f"{bench}.log")
        if not os.path.exists(path):
            continue
        with open(path, encoding="utf-8", errors="replace") as log:
            for line in log:
                if not line.startswith("BENCH "):
                    continue
                words = key_values(line)
                try:
                    value = float(words.pop("value"))
                    key = (words.pop("figure"), words.pop("system"))
                except (KeyError, ValueError):
                    continue
                figures[key] = (value, words.pop("unit", ""), words)
    return figures


def read_status(run_dir):
    """{bench: (status, reason)}."""
    status = {}
    with open(os.path.join(run_dir, "status.txt"), encoding="utf-8") as lines:
        for line in lines:
            bench, _, rest = line.strip().partition(" ")
            state, _, reason = rest.partition(" ")
            status[bench] = (state, reason)
    return status


def number(value, unit):
    """A figure for the table: few digits, its unit."""
    text = f"{value:,.0f}" if abs(value) >= 100 else f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}"
    return f"{text} {unit}"


def extrapolation(extras):
    """A note for a figure measured on fewer devices than it stands for."""
    measured, devices = extras.get("measured_devices"), extras.get("devices")
    if measured and devices and measured != devices:
        return f" — measured with {int(measured):,} devices (a time is extrapolated linearly to {int(devices):,})"
    return ""


def table(figures, status):
    """The Markdown table: figure, Tributary, peer, ratio."""
    out = [
        "| Figure | Tributary | Peer | Peer's figure | Ratio Tributary / peer (better when) |",
        "|---|---:|---|---:|---:|",
    ]
    for bench, figure, ours, peer, what, peer_name, better in ROWS:
        state, reason = status.get(bench, ("skipped", "not run"))
        a, b = figures.get((figure, ours)), figures.get((figure, peer))
        if peer is None:
            shown = number(a[0], a[1]) if state == "ok" and a is not None else f"not measured in this run ({reason or 'its figure was not printed'})"
            out.append(f"| {what} | {shown} | — (no peer offers it) | — | — |")
            continue
        if state != "ok" or a is None or b is None:
            why = reason if state != "ok" else "its figure was not printed"
            out.append(f"| {what} | not measured in this run | {peer_name} | — | — ({why}) |")
            continue
        ratio = a[0] / b[0] if b[0] else float("nan")
        peer_name += extrapolation(b[2])
        out.append(
            f"| {what} | {number(a[0], a[1])} | {peer_name} | {number(b[0], b[1])} | {ratio:.2f}× ({better}) |"
        )
    return "\n".join(out)


def bars(axis, labels, values, unit, title):
    axis.bar(labels, values, color=["#2b6cb0", "#a0aec0", "#718096", "#4a5568"][: len(values)])
    axis.set_title(title, fontsize=10)
    axis.set_ylabel(unit)
    for index, value in enumerate(values):
        axis.annotate(f"{value:,.0f}" if value >= 100 else f"{value:.1f}", (index, value), ha="center", va="bottom", fontsize=8)


def chart(plt, path, panels):
    """One PNG of bar panels [(title, unit, [(label, value)])], skipping empty ones."""
    panels = [p for p in panels if p[2]]
    if not panels:
        return None
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), squeeze=False)
    for axis, (title, unit, items) in zip(axes[0], panels):
        bars(axis, [i[0] for i in items], [i[1] for i in items], unit, title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.path.basename(path)


def pick(figures, figure, systems):
    """[(system, value)] of `figure` for the systems that printed it."""
    return [(name, figures[(figure, name)][0]) for name in systems if (figure, name) in figures]


def login_timeline(plt, run_dir, path):
    """Memory over time during the login burst, one line per server."""
    samples = os.path.join(run_dir, "logins-rss.csv")
    if not os.path.exists(samples):
        return None
    series = {}
    with open(samples, encoding="utf-8") as rows:
        for row in csv.DictReader(rows):
            series.setdefault(row["server"], ([], []))
            series[row["server"]][0].append(float(row["seconds"]))
            series[row["server"]][1].append(int(row["rss_kib"]) / 1024)
    fig, axis = plt.subplots(figsize=(7, 3.6))
    for name, (xs, ys) in series.items():
        axis.plot(xs, ys, label=name)
    axis.set_xlabel("seconds from the start of the burst")
    axis.set_ylabel("RSS (MiB)")
    axis.set_title("Resident memory during and after the login burst", fontsize=10)
    axis.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return os.path.basename(path)


def charts(figures, run_dir, chart_dir):
    """Draws every chart this run has figures for; their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    os.makedirs(chart_dir, exist_ok=True)
    for old in os.listdir(chart_dir):
        if old.endswith(".png"):
            os.remove(os.path.join(chart_dir, old))
    mqtt = ["gateway", "rabbitmq-mqtt", "mosquitto"]
    ingest = ["gateway", "rabbitmq-mqtt", "amqp-confirms-1x1", "amqp-confirms-4x1"]
    made = [
        chart(plt, os.path.join(chart_dir, "ingest.png"), [
            ("QoS 1 ingest with confirms", "msg/s", pick(figures, "ingest_rate", ingest)),
            ("MQTT QoS 1 ingest", "msg/s", pick(figures, "ingest_rate", mqtt)),
            ("publish → PUBACK p99", "ms", pick(figures, "ingest_p99", mqtt)),
        ]),
        chart(plt, os.path.join(chart_dir, "memory.png"), [
            ("memory per idle connection", "bytes", pick(figures, "idle_bytes_per_connection", mqtt)),
            ("RSS before logins", "MiB", pick(figures, "login_rss_before", mqtt)),
            ("RSS peak during logins", "MiB", pick(figures, "login_rss_peak", mqtt)),
            ("RSS after logins", "MiB", pick(figures, "login_rss_after", mqtt)),
        ]),
        login_timeline(plt, run_dir, os.path.join(chart_dir, "logins-rss.png")),
        chart(plt, os.path.join(chart_dir, "commands.png"), [
            ("command round trip p50", "ms", pick(figures, "command_round_trip_p50", mqtt)),
            ("command round trip p99", "ms", pick(figures, "command_round_trip_p99", mqtt)),
        ]),
        chart(plt, os.path.join(chart_dir, "worker.png"), [
            ("into PostgreSQL", "rows/s", pick(figures, "worker_rows", ["worker", "copy", "broker-ceiling"])),
        ]),
        chart(plt, os.path.join(chart_dir, "api-history.png"), [
            (f"history {kind}", "ms", [
                (f"{system} {stat}", figures[(f"history_{kind}_{stat}", system)][0])
                for stat in ["p50", "p99"] for system in ["api", "sql"]
                if (f"history_{kind}_{stat}", system) in figures
            ])
            for kind in ["page", "buckets", "group", "prefix"]
        ]),
        chart(plt, os.path.join(chart_dir, "api-live.png"), [
            ("live publish → receipt p50", "ms", pick(figures, "live_latency_p50", ["api-sse", "amqp-consumer"])),
            ("live publish → receipt p99", "ms", pick(figures, "live_latency_p99", ["api-sse", "amqp-consumer"])),
            ("API CPU, 100 SSE clients", "% of a core", pick(figures, "live_api_cpu", ["api-sse"])),
        ]),
        chart(plt, os.path.join(chart_dir, "autoscale.png"), [
            ("backlog → scale decision", "s", pick(figures, "autoscale_decision", ["tributary-poll5", "tributary-poll1", "keda-hpa"])),
        ]),
    ]
    return [name for name in made if name]


def read_meta(run_dir):
    with open(os.path.join(run_dir, "meta.txt"), encoding="utf-8") as lines:
        return dict(line.rstrip("\n").split("=", 1) for line in lines if "=" in line)


def document(meta, status, figures, images):
    """The whole of docs/benchmarks.md."""
    runs = "\n".join(f"- `{bench}`: {state}{' — ' + reason if reason else ''}" for bench, (state, reason) in status.items())
    pictures = "\n\n".join(f"![{name[:-4]}](benchmarks/{name})" for name in images)
    return f"""# Benchmarks

Written by `hack/bench.sh` (do not edit by hand; run it again). Benchmarks are not tests:
each figure is printed beside a peer measured in the same run on the same machine, and
nothing is asserted about time. Figures from a busy machine are rough: compare the ratios,
not the absolute numbers, and look at the load below before reading much into either.

- Date: {meta.get('date', '?')}; commit `{meta.get('commit', '?')}`
- Machine: {meta.get('cores', '?')} cores ({meta.get('cpu', '?')}), {meta.get('memory', '?')} memory, {meta.get('kernel', '?')}
- Load average (1, 5, 15 min): {meta.get('load_start', '?')} at the start, {meta.get('load_end', '?')} at the end{meta.get('load_note', '')}
- Mode: {meta.get('mode', '?')}; sizes: {meta.get('sizes', '?')}

## Figures

{table(figures, status)}

Ratios are Tributary's figure over the peer's; "(higher)" or "(lower)" says which way is
better for that figure. The gateway's login burst checks passwords with argon2id at the
recommended cost (19 MiB, what `tributary-gateway hash-password` writes), Mosquitto with
its own PBKDF2-SHA512 hashes (`mosquitto_passwd`); half of the logins use a wrong password,
and the gateway slows repeated failures on purpose, so the burst's duration is context, not
a race. The gateway keeps each password-check slot's argon2 memory for its lifetime and
reuses it (`auth.passwordCheckSlots`, 2 by default, × 19 MiB), so its memory after the burst
stays at the peak by design: the figure to watch is that the peak stays bounded however
many logins come. The ingest queues are quorum queues (the Queue resource's default) unless
the run says otherwise (`queue_type` in the log); the broker's confirm ceiling is an AMQP
client publishing the gateway's envelopes to the same queue with the same load (publishers,
messages in flight each), which is what the gateway can at most reach. The KEDA + HPA reference is computed from its default intervals (not run here), with
the pod start measured in the same run.

## Runs

{runs}

## Charts

{pictures}
"""


def main():
    run_dir, doc_path, chart_dir = sys.argv[1:4]
    status = read_status(run_dir)
    figures = read_figures(run_dir, status.keys())
    images = charts(figures, run_dir, chart_dir)
    with open(doc_path, "w", encoding="utf-8") as doc:
        doc.write(document(read_meta(run_dir), status, figures, images))
    print(f"wrote {doc_path} and {len(images)} charts in {chart_dir}")


if __name__ == "__main__":
    main()
