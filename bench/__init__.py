"""Benchmarks: engine speed and fidelity (engine_cpu, sim_speed, sim_fidelity) and gateway overhead."""
