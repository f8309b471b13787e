"""Pitstop's compact engine: paged KV cache with prefix caching and TTL pins, continuous batching,
a torch model runner and a simulated runner that share one scheduler and one block manager."""
