"""The engine's own decoder: a Llama/Qwen-family transformer (dense or mixture-of-experts) in plain torch that runs a flattened
varlen batch against a paged KV cache, plus its config parser, weight loader and sampler."""
