"""What sending requests in flight on a deployment its probes take out elsewhere (gateway/health_rescue.py)
costs a request that never needs it: the dispatcher's path (gateway/dispatch.py) for a whole answer, with
`health_checks:` on and `rescue_in_flight` true (each call a task raced against its deployment's outage) and
false (the call awaited in the request's own task), on a fake probed deployment pair that answers at once,
so what is measured is the dispatch path alone. Rounds alternate on and off; the median round's.

    .venv/bin/python -m bench.health_rescue_overhead [--requests 20000] [--rounds 7] [--concurrency 1 16]

Writes bench/results/health_rescue_overhead.json."""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import AsyncIterator

from prometheus_client import CollectorRegistry

from bench.common import command, machine_info, write_report
from bench.procs import ROOT
from gateway.backends.base import CallContext, Kind
from gateway.deployments import Deployment, DeploymentPool
from gateway.dispatch import Dispatcher
from gateway.health_rescue import Rescues
from gateway.model_list_config import ModelInfo

OUT = ROOT / "bench" / "results" / "health_rescue_overhead.json"
ANSWER = {"id": "x", "object": "chat.completion", "model": "m", "usage": {"prompt_tokens": 3, "completion_tokens": 1},
          "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"}, "finish_reason": "stop"}]}


class InstantBackend:
    """A self-hosted deployment (probed) that answers at once, after one turn of the loop as a socket would."""

    probes_health, native_tools, serves_embeddings, uses_rank, accepts_session = True, True, True, False, False

    async def complete(self, kind: Kind, body: dict, ctx: CallContext) -> dict:
        await asyncio.sleep(0)
        return ANSWER

    def stream(self, kind: Kind, body: dict, ctx: CallContext) -> AsyncIterator[dict]:
        raise NotImplementedError

    async def healthy(self) -> bool:
        return True


def dispatcher(rescue: bool) -> Dispatcher:
    pool = DeploymentPool()
    for i in range(2):
        pool.add(Deployment(f"m#{i}", "m", InstantBackend(), ModelInfo(), "hosted_vllm/m"))  # type: ignore[arg-type]
    return Dispatcher(pool, rescues=Rescues(CollectorRegistry()) if rescue else None)


async def one_round(rescue: bool, requests: int, concurrency: int) -> dict[str, float]:
    """Wall and CPU time per request over `requests`, `concurrency` in flight at once."""
    d = dispatcher(rescue)
    body = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}

    async def worker(n: int) -> None:
        for i in range(n):
            await d.complete("m", "chat", body, CallContext(request_id=str(i)))

    wall, cpu = time.perf_counter(), time.process_time()
    await asyncio.gather(*(worker(requests // concurrency) for _ in range(concurrency)))
    done = requests // concurrency * concurrency
    return {"wall_us": (time.perf_counter() - wall) / done * 1e6, "cpu_us": (time.process_time() - cpu) / done * 1e6}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=20000)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    parser.add_argument("--out", default=str(OUT))
    args = parser.parse_args(argv)
    results = []
    for concurrency in args.concurrency:
        rounds: dict[str, list[dict[str, float]]] = {"off": [], "on": []}
        for _ in range(args.rounds):
            for name in ("off", "on"):  # alternated: a noisy neighbour's minute falls on both
                rounds[name].append(asyncio.run(one_round(name == "on", args.requests, concurrency)))
        median = {name: {k: statistics.median(r[k] for r in runs) for k in ("wall_us", "cpu_us")}
                  for name, runs in rounds.items()}
        added = median["on"]["cpu_us"] - median["off"]["cpu_us"]
        row = {"concurrency": concurrency, "rescue_off": median["off"], "rescue_on": median["on"],
               "added_cpu_us_per_request": added,
               "added_cpu_share_at_200_rps": added * 200 / 1e6,  # of one core
               "rounds": rounds}
        results.append(row)
        print(f"concurrency {concurrency}: dispatch off {median['off']['cpu_us']:.1f} us CPU, on "
              f"{median['on']['cpu_us']:.1f} us CPU a request: +{added:.1f} us, {added * 200 / 1e4:.3f}% of a core "
              f"at 200 req/s", flush=True)
    report = {"command": command("bench.health_rescue_overhead", argv), "machine": machine_info(),
              "settings": vars(args), "results": results}
    write_report(args.out, report)
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
