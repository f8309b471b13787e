"""Quality models: features -> each trained model's expected quality in [0, 1]."""
