"""Assemble bench/results/summary.md, the committed report: a header (what was measured, when, on what
machine), a headline table of the key figures from each benchmark's JSON summary, then each
benchmark's markdown section. A benchmark whose results are missing (or older and shaped differently)
is left out of the headline rather than failing the summary."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from bench.common import RESULTS

# the order of the sections; any other <name>.md found in bench/results follows, by name
ORDER = ("router_overhead", "load_curve", "auth_overhead", "cold_start", "batching", "quota_accuracy", "shared_quota",
         "streaming", "observability", "console")
PLOT = "latency_vs_load.png"


def load(name: str) -> dict[str, Any] | None:
    try:
        return json.loads((RESULTS / f"{name}.json").read_text())
    except (OSError, ValueError):
        return None


def _router_overhead(s: dict[str, Any], _: dict[str, Any]) -> list[tuple[str, str]]:
    return [("Router overhead: throughput through the router / direct (closed loop, 16 clients)",
             f"×{s['throughput_ratio']:.2f}"),
            ("Router overhead: added p50 latency (sequential requests)", f"+{s['added_p50_ms']:.2f} ms"
             + (f" (baseline checkout: +{s['baseline_added_p50_ms']:.2f} ms)" if "baseline_added_p50_ms" in s
                else ""))]


def _auth_overhead(s: dict[str, Any], r: dict[str, Any]) -> list[tuple[str, str]]:
    rows = [("Router CPU per proxied request, auth + limits off → on",
             f"{r['off']['cpu_us_median']:.0f} → {r['on']['cpu_us_median']:.0f} µs "
             f"({(s['cpu_ratio_on_off'] - 1) * 100:+.1f}%)")]
    if "bare_cpu_us" in s:
        rows.append(("Router CPU per request with auth + limits / a bare aiohttp proxy hop",
                     f"{s['router_cpu_us_on']:.0f} / {s['bare_cpu_us']:.0f} µs (×{s['cpu_ratio_on_bare']:.2f})"))
    if "baseline_cpu_us_on" in s:
        rows.append(("Router CPU per request with auth + limits, baseline checkout → this one",
                     f"{s['baseline_cpu_us_on']:.0f} → {s['router_cpu_us_on']:.0f} µs "
                     f"(×{s['cpu_ratio_on_baseline']:.3f})"))
    return rows


def _cold_start(s: dict[str, Any], _: dict[str, Any]) -> list[tuple[str, str]]:
    return [("Cold start from zero, first request p50 / p99 against the floor's p50 (goal ≤ 1.5× / 2.5×)",
             f"{s['fork']['p50_ms']:.0f} / {s['fork']['p99_ms']:.0f} ms vs {s['floor']['p50_ms']:.0f} ms "
             f"(×{s['p50_over_floor']:.2f} / ×{s['p99_over_floor']:.2f})"),
            ("Cold start from zero, p50: fork server vs plain spawn (the fallback)",
             f"{s['fork']['p50_ms']:.0f} ms vs {s['spawn']['p50_ms']:.0f} ms (×{s['spawn_over_fork_p50']:.1f})")]


def _batching(s: dict[str, Any], _: dict[str, Any]) -> list[tuple[str, str]]:
    at32 = s["32"]
    return [("Adaptive batching at 32 clients (embeddings): throughput on/off, p95 on/off",
             f"×{at32['throughput_ratio']:.2f}, p95 ×{at32['p95_ratio']:.2f}")]


def _load_curve(s: dict[str, Any], _: dict[str, Any]) -> list[tuple[str, str]]:
    top = s["max_sustainable_rps"]

    def rate(name: str) -> str:
        return f"{top[name]:.0f}" if s["saturated"][name] else f"≥ {top[name]:.0f}"

    return [("Max sustainable throughput, open loop: router vs direct",
             f"{rate('router')} vs {rate('direct')} req/s (×{s['max_throughput_ratio']:.2f})"),
            (f"Added p50 latency at {s['lightest_rate']:g} req/s, open loop", f"{s['added_p50_ms_lightest']:+.2f} ms")]


def _quota_accuracy(s: dict[str, Any], _: dict[str, Any]) -> list[tuple[str, str]]:
    rate, conc, daily = s["rate"], s["concurrency"], s["daily"]
    return [(f"Rate limit {rate['rps']:g}/s burst {rate['burst']}: admitted / expected",
             f"{rate['measured_ok']:.0f} / {rate['expected_ok']:.1f} ({rate['error_pct']:+.2f}%)"),
            (f"Concurrency limit {conc['limit']}: most in flight in the router",
             f"{conc['max_in_flight_router']} ({conc['error_pct']:+.0f}%)"),
            (f"Daily quota {daily['limit']}: admitted of {daily['sent']}", f"{daily['measured_ok']:.0f}"
             f" ({daily['error_pct']:+.2f}%)"),
            ("Retry-After on every 429", "yes" if s["retry_after_on_every_429"] else "**no**")]


def _shared_quota(s: dict[str, Any], _: dict[str, Any]) -> list[tuple[str, str]]:
    revocation = (f"{s['revocation_median_s'] * 1000:.0f} / {s['revocation_max_s'] * 1000:.0f} ms"
                  if s["revocation_median_s"] is not None else "never")
    return [(f"Daily quota {s['daily']} across 3 routers sharing Redis: admitted (min–max over rounds)",
             f"{s['admitted_min']}–{s['admitted_max']} ({s['overshoot_max_pct']:+.2f}% at most"
             + (", usage exact" if s["usage_exact_every_round"] else ", **usage off**") + ")"),
            ("Key revocation reaching the other routers (median / max)",
             revocation + ("" if s["revocation_all_refused"] else " (**not everywhere**)"))]


def _streaming(s: dict[str, Any], _: dict[str, Any]) -> list[tuple[str, str]]:
    hold, quota = s["hold"], s["token_quota"]
    return [("Streaming: router's added time to first token (p50) / per chunk (p50 gap)",
             f"{s['added_ttft_p50_ms']:+.2f} ms / {s['added_gap_p50_ms']:+.3f} ms "
             f"({s['router_cpu_us_per_chunk']:.0f} µs router CPU per chunk)"),
            ("Streaming: tokens/s at 1 / 4 / 16 concurrent streams (storyteller, one replica)",
             " / ".join(f"{s['tokens_per_s'][c]:.0f}" for c in ("1", "4", "16"))),
            (f"{hold['clients']} concurrent slow streams through one router: completed, errors",
             f"{hold['completed']}, {hold['errors']}"),
            (f"Token quota {quota['quota']}/day: charged (overshoot, bound)",
             f"{quota['charged']} ({quota['overshoot_pct']:+.2f}%, bound +{quota['bound']})")]


def _observability(s: dict[str, Any], _: dict[str, Any]) -> list[tuple[str, str]]:
    return [("Access log: CPU per request, share of the router's (goal ≤ 5%)",
             f"{s['access_line_us']:.1f} µs, {s['access_log_cpu_share'] * 100:.1f}%"),
            ("Traces exported over OTLP: router CPU, every request / 10% sampled, vs. none",
             f"×{s['traces_cpu_ratio']:.2f} / ×{s['sampled_traces_cpu_ratio']:.2f}")]


def _console(s: dict[str, Any], _: dict[str, Any]) -> list[tuple[str, str]]:
    return [(f"Web console: the functions page with {s['functions']:,} functions rendered in headless Chromium",
             f"{s['render_ms_median']:.0f} ms (goal < 1,000 ms)"),
            ("Web console: router CPU one open tab's polling adds (1,000 functions / the example's function page)",
             f"{s['fleet_list_cpu_percent']:.2f}% / {s['example_function_cpu_percent']:.2f}% of a core (goal ≤ 1%)")]


HEADLINES: dict[str, Callable[[dict[str, Any], dict[str, Any]], list[tuple[str, str]]]] = {
    "router_overhead": _router_overhead, "load_curve": _load_curve, "auth_overhead": _auth_overhead,
    "cold_start": _cold_start, "batching": _batching, "quota_accuracy": _quota_accuracy,
    "shared_quota": _shared_quota, "streaming": _streaming, "observability": _observability,
    "console": _console,
}


def headline(data: dict[str, dict[str, Any]]) -> list[str]:
    rows = []
    for name, rows_of in HEADLINES.items():
        if name not in data:
            continue
        try:
            rows += [f"| {label} | {value} |" for label, value in rows_of(data[name]["summary"],
                                                                         data[name].get("results", {}))]
        except (KeyError, TypeError, ValueError, ZeroDivisionError):
            continue  # a result file from an older version of the benchmark
    return rows


def machine_of(data: dict[str, Any]) -> str:
    m = data.get("machine", {})
    return f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, Python {m.get('python', '?')}"


def main() -> None:
    names = [n for n in ORDER if (RESULTS / f"{n}.md").exists()]
    names += sorted(p.stem for p in RESULTS.glob("*.md") if p.stem not in ORDER and p.name != "summary.md")
    data = {n: d for n in names if (d := load(n)) is not None}
    days = sorted(d["when"][:10] for d in data.values() if d.get("when"))
    machines = sorted({machine_of(d) for d in data.values()})
    when = (days[0] if days[0] == days[-1] else f"{days[0]} to {days[-1]}") if days else "unknown dates"
    text = [
        "# fnserve benchmarks",
        "",
        "Written by `make bench` (each benchmark is `python -m bench.<name>`, then `python -m bench.summarize`): "
        "what the router costs per request in latency, throughput and CPU; latency against open-loop offered "
        "load, through the router and straight to a replica; how the API-key limits (rate, concurrency, daily "
        "quota) are enforced; cold starts from zero; adaptive batching; and generative streams (time to first token "
        "and chunk gaps through the router, tokens/s, 500 concurrent streams, the token quota's overshoot). Client, router and replicas run on "
        "the same machine, so absolute throughputs are floors; the ratios are the figures to compare.",
        "",
        f"Measured {when} on {'; '.join(machines) if machines else 'an unrecorded machine'}. Each section below "
        "names its machine and method; each run also writes every round to bench/results/<name>.json (not "
        "committed).",
    ]
    rows = headline(data)
    if rows:
        text += ["", "## Headline", "", "| figure | value |", "|---|---|", *rows]
    sections = []
    for name in names:
        section = (RESULTS / f"{name}.md").read_text().strip()
        if PLOT in section and not (RESULTS / PLOT).exists():
            section = section.replace(f"({PLOT})", f"({PLOT}) (plot missing: run `python -m bench.load_curve`)")
        sections.append(section)
    (RESULTS / "summary.md").write_text("\n".join(text) + "\n\n" + "\n\n".join(sections) + "\n")


if __name__ == "__main__":
    main()
