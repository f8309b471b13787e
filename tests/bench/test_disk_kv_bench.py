"""bench/disk_kv.py's pieces at a small size: agent contexts a small host tier cannot keep come back from
disk; after a restart they come back from disk only while its index is kept; the torch part reaches each
tier it times (no timing is checked)."""

from __future__ import annotations

from pathlib import Path

from bench.agent_sim import ChatRequest
from bench.agent_workload import ProgramTemplate, ToolScaling, TurnTemplate, make_programs
from bench.disk_kv import GPU_ONLY_RULES, restart_run, sim_tiers, summary
from bench.disk_kv_torch import PATHS, time_to_first_token
from engine.roofline import RooflineStepTime

MODEL = RooflineStepTime.builtin("llama-3.1-8b")
TEMPLATE = ProgramTemplate("fix-a-bug", [TurnTemplate(6000, 60, "bash", "ls", 2.0),
                                         TurnTemplate(300, 40, "bash", "pytest", 4.0),
                                         TurnTemplate(200, 30, None, "", 0.0)])
CHAT = [ChatRequest(0.5 * i, 3000, 100) for i in range(20)]


def test_contexts_a_small_host_tier_cannot_keep_come_back_from_disk() -> None:
    tiers = {"gpu-only": (0, 0, 1), "host-1x": (1, 0, 1), "host-1x+disk-16x": (1, 16, 1)}
    rows = sim_tiers(MODEL, 600, [2.0], [TEMPLATE], ToolScaling(), 8, 2.0, 0, tiers, ("no-pinning",))
    by_tier = {r["tiers"]: r for r in rows}
    assert by_tier["host-1x+disk-16x"]["disk_hit_tokens"] > 5_000 and by_tier["host-1x"].get("disk_hit_tokens") is None
    assert (by_tier["host-1x+disk-16x"]["prefill_tokens_computed"]
            < by_tier["host-1x"]["prefill_tokens_computed"] - 5_000)
    assert by_tier["host-1x+disk-16x"]["disk_read_s"] > 0 and by_tier["gpu-only"]["disk_read_s"] == 0
    (row,) = summary(rows)
    assert row["speedup_vs_gpu_only"]["gpu-only"] == 1.0 and set(row["jct_avg_s"]) == set(tiers)


def test_pitstop_prices_a_disk_tier_into_shorter_pins() -> None:
    """20k-token contexts on a contended GPU with four drives behind it: read back from disk they cost
    less than their re-prefill, so Pitstop's pins are shorter than its GPU-only rules' and hold less
    memory, and programs finish sooner (virtual time)."""
    long = ProgramTemplate("read-a-repo", [TurnTemplate(20_000, 60, "bash", "ls", 2.0),
                                           TurnTemplate(300, 40, "bash", "pytest", 4.0),
                                           TurnTemplate(200, 30, None, "", 0.0)])
    rows = sim_tiers(MODEL, 2000, [2.0], [long], ToolScaling(), 8, 2.0, 0, {"disk-16x, 4 drives": (0, 16, 4)},
                     ("pitstop", GPU_ONLY_RULES))
    tiered, gpu_rules = (next(r for r in rows if r["policy"] == name) for name in ("pitstop", GPU_ONLY_RULES))
    assert tiered["ttl_median_s"] < gpu_rules["ttl_median_s"]
    assert tiered["pinned_gib_avg"] < gpu_rules["pinned_gib_avg"] / 2
    assert tiered["jct_avg_s"] < gpu_rules["jct_avg_s"]


def test_after_a_restart_contexts_come_back_from_disk_only_while_its_index_is_kept(tmp_path: Path) -> None:
    from bench.agent_sim import POLICIES

    policy = next(p for p in POLICIES if p.name == "pitstop")
    programs = make_programs([TEMPLATE], 6, 2.0, ToolScaling(), seed=0)
    restart_s = programs[3].arrival_s
    kept = restart_run(policy, programs, CHAT[:6], MODEL, 1200, 1, 16, True, restart_s, tmp_path / "kept")
    lost = restart_run(policy, programs, CHAT[:6], MODEL, 1200, 1, 16, False, restart_s, tmp_path / "lost")
    assert kept["restored_blocks"] > 0 and lost["restored_blocks"] == 0
    # Without the index, the new engine's disk holds only what it evicts itself.
    assert kept["disk_hit_tokens_after_restart"] > lost["disk_hit_tokens_after_restart"] + 5_000
    assert kept["prefill_tokens_after_restart"] < lost["prefill_tokens_after_restart"] - 5_000
    assert kept["programs_across_restart"] == lost["programs_across_restart"] > 0
    assert kept["first_turn_after_restart_cached_share"] > lost["first_turn_after_restart_cached_share"]


def test_the_torch_part_reaches_every_tier_it_times(tmp_path: Path) -> None:
    result = time_to_first_token(64, 2, 64, 1, disk_dir=tmp_path)
    assert result["cached_tokens"]["computed"] == [0]
    assert all(result["cached_tokens"][path] == [64] for path in PATHS if path != "computed")
    assert result["disk_writes"]["writer_blocks"] >= result["disk_writes"]["steps_blocks"] > 0
    assert not list(tmp_path.iterdir())  # the model and the disk tier's files are gone after
