"""Families read by a module of their own, each a function from a Hugging Face config to (that config with its
family's defaults filled in, the ModelConfig fields it sets over what engine/model/config.py's generic parse makes of
it): Gemma 2 (engine/model/gemma2.py), GLM-4 (engine/model/glm4.py), GLM-4.5/4.6 (engine/model/glm4_moe.py), OLMo 2
(engine/model/olmo2.py), SmolLM3 (engine/model/smollm3.py), Cohere2 (engine/model/cohere2.py), Llama 4
(engine/model/llama4_config.py)."""

from __future__ import annotations

from collections.abc import Callable

from engine.model.cohere2 import COHERE2, cohere2_config
from engine.model.gemma2 import GEMMA2, gemma2_config
from engine.model.glm4 import GLM4, glm4_checkpoint_name, glm4_config
from engine.model.glm4_moe import GLM4_MOE, glm4_moe_config
from engine.model.llama4_config import LLAMA4, LLAMA4_TEXT, llama4_config
from engine.model.olmo2 import OLMO2, olmo2_config
from engine.model.smollm3 import SMOLLM3, smollm3_config

ADDED_FAMILIES: dict[str, Callable[[dict], tuple[dict, dict]]] = {
    GEMMA2: gemma2_config, GLM4: glm4_config, GLM4_MOE: glm4_moe_config, OLMO2: olmo2_config,
    SMOLLM3: smollm3_config, COHERE2: cohere2_config, LLAMA4_TEXT: llama4_config, LLAMA4: llama4_config}
# Families whose checkpoint names some tensor otherwise than the decoder (the loader renames it after its own mapping).
CHECKPOINT_NAMES: dict[str, Callable[[str], str]] = {GLM4: glm4_checkpoint_name}
# Families whose checkpoints hold multi-token-prediction layers past the last served one (the loader skips them).
MTP_FAMILIES = (GLM4_MOE,)
