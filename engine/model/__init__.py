"""The engine's own decoder: a Llama/Qwen2-family transformer in plain torch that runs a flattened
varlen batch against a paged KV cache, plus its config parser, weight loader and sampler."""
