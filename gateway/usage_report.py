"""`pitstop report usage`: what the outcome log says was spent over the last days, and what routing saved,
read with the same query as `GET /v1/organization/costs` (storage/usage.py).

    $ pitstop report usage --days 7
    route group   requests   cost USD   on its costliest model   saved
    auto             1,204     3.1802                  11.9544   73.4%
    ...

A route group's "on its costliest model" is what the requests its router chose for would have cost had
every one gone to the group's costliest model (each request's real cost scaled by the router's predicted
costs of the two); requests that named a model cost what they cost there. `--json` prints the lines."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from storage.usage import UsageQuery, UsageTotals, merged, usage

DAY_S = 86_400


def add_report_commands(groups: argparse._SubParsersAction, default_config: Path) -> None:
    report = groups.add_parser("report", help="reports read from the outcome log")
    what = report.add_subparsers(dest="command", metavar="WHAT", required=True)
    spend = what.add_parser("usage", help="requests, tokens and cost by route group, model and key over the last "
                            "days, and what routing saved")
    spend.add_argument("--config", type=Path, default=default_config)
    spend.add_argument("--days", type=float, default=7.0, help="how far back (default 7)")
    spend.add_argument("--json", action="store_true", help="print the lines as JSON")
    spend.set_defaults(handler=usage_report_command)


def _line(part: UsageTotals) -> dict:
    return {**part.group, "requests": part.requests, "input_tokens": part.input_tokens,
            "output_tokens": part.output_tokens, "cached_tokens": part.cached_tokens, "cache_hits": part.cache_hits,
            "cost_usd": round(part.cost_usd, 6), "baseline_cost_usd": round(part.baseline_cost_usd, 6),
            "saved_usd": round(part.saved_usd, 6)}


def report(totals: list[UsageTotals]) -> dict[str, list[dict]]:
    """The range's lines: by route group, by model, by key, and all together."""
    def ordered(lines: list[UsageTotals]) -> list[dict]:
        return [_line(line) for line in sorted(lines, key=lambda line: -line.cost_usd)]

    return {"route_groups": ordered(merged(totals, ("route_group",))), "models": ordered(merged(totals, ("model",))),
            "api_keys": ordered(merged(totals, ("api_key_id",))), "total": ordered(merged(totals))}


def _share(saved: float, baseline: float) -> str:
    return f"{saved / baseline:6.1%}" if baseline > 0 else "     -"


def _table(lines: dict[str, list[dict]], days: float) -> str:
    out = [f"the last {days:g} days"]
    for title, name in (("route group", "route_group"), ("model", "model"), ("api key", "api_key_id")):
        out.append(f"\n{title:<34} {'requests':>9} {'in tokens':>12} {'out tokens':>11} {'cost USD':>11} "
                   f"{'on its costliest model':>23} {'saved':>6}")
        for line in lines[{"route_group": "route_groups", "model": "models", "api_key_id": "api_keys"}[name]]:
            label = line[name] if line[name] is not None else "(none)"
            out.append(f"{label:<34} {line['requests']:>9,} {line['input_tokens']:>12,} {line['output_tokens']:>11,} "
                       f"{line['cost_usd']:>11.4f} {line['baseline_cost_usd']:>23.4f} "
                       f"{_share(line['saved_usd'], line['baseline_cost_usd'])}")
    total = lines["total"][0] if lines["total"] else None
    if total:
        out.append(f"\nall: {total['requests']:,} requests ({total['cache_hits']:,} from the response cache), "
                   f"{total['cost_usd']:.4f} USD; routing saved {total['saved_usd']:.4f} USD "
                   f"({_share(total['saved_usd'], total['baseline_cost_usd']).strip()})")
    else:
        out.append("\nno requests in the log for this range")
    return "\n".join(out)


def usage_report_command(args: argparse.Namespace) -> int:
    from gateway.commands import _storage_url
    from storage.db import create_engine

    if not args.days > 0:
        raise SystemExit("pitstop: --days must be above 0")
    now = int(time.time()) + 1
    start = now - int(args.days * DAY_S)
    engine = create_engine(_storage_url(args.config))
    try:
        totals = usage(engine, UsageQuery(start=start, end=now, bucket_s=DAY_S,
                                          group_by=("route_group", "model", "api_key_id")))
    finally:
        engine.dispose()
    lines = report(totals)
    print(json.dumps(lines, indent=2) if args.json else _table(lines, args.days))
    return 0
