"""Image inputs on a quantized language model: the vision tower and projector stay whole, in the model's dtype
(as vLLM serves them), so image features are bit-equal to the unquantized engine's and images answer as with the
unquantized model up to the quantization's own error (the text prompts' own); `pitstop engine quantize` copies a
vision folder's tower and projector as they are (named in `ignore`), so the written folder takes images exactly
as `--quantization` at load does; a checkpoint that quantized its tower is refused with the reason; a quantized
checkpoint served over HTTP answers an image with the openai SDK."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from engine.config import EngineConfig
from engine.image_inputs import ImageInput
from engine.llm_engine import LLMEngine
from engine.model.int4_linear import Int4Linear
from engine.model.loader import safetensors_files
from engine.model.quant_linear import QuantizedLinear
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.torch_runner import TorchModelRunner
from gateway.cli import main as cli_main
from tests.engine.gemma3_vision_inputs import vision_config
from tests.engine.llava_inputs import data_url, picture, run
from tests.engine.serving import engine_server, sdk
from tests.engine.vision_families import FAMILIES, Requests, llava_requests

SCORED = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, prompt_logprobs=0)
VISION_PREFIXES = ("model.vision_tower.", "model.multi_modal_projector.", "vision_tower.", "multi_modal_projector.",
                   "model.visual.", "visual.")


def _served(model_dir: Path, requests: Requests, quantization: str | None = None
            ) -> tuple[dict[str, RequestOutput], TorchModelRunner]:
    runner = TorchModelRunner(model_dir, 48, 16, device="cpu", quantization=quantization)
    engine = LLMEngine(EngineConfig(num_blocks=48, max_model_len=512), runner)
    return run(engine, requests, SCORED), runner


def _prompt_logprobs(out: RequestOutput) -> torch.Tensor:
    assert out.prompt_logprobs is not None
    return torch.tensor([lp.logprob for lp in out.prompt_logprobs])


def _vision_tensors(model_dir: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for path in safetensors_files(model_dir):
        with safe_open(str(path), framework="pt") as f:
            tensors |= {name: f.get_tensor(name) for name in f.keys() if name.startswith(VISION_PREFIXES)}  # noqa: SIM118
    return tensors


@pytest.mark.parametrize("method", ["int8", "fp8"])
def test_a_w8a8_llava_keeps_its_tower_whole_and_answers_images_within_the_quantization_error(
        tiny_llava_dir: Path, method: str) -> None:
    requests = llava_requests(tiny_llava_dir)
    full, full_runner = _served(tiny_llava_dir, requests)
    quantized, runner = _served(tiny_llava_dir, requests, method)
    assert runner.image_features is not None and full_runner.image_features is not None
    assert any(isinstance(m, QuantizedLinear) for m in runner.model.modules())  # the language model is W8A8
    encoder = runner.image_features.encoder
    assert not any(isinstance(m, QuantizedLinear) for m in encoder.modules())
    assert {p.dtype for p in encoder.parameters()} == {runner.dtype}
    images = [image for _, pictures in requests.values() for image in pictures]
    with torch.inference_mode():
        for ours, unquantized in zip(encoder.encode(images, runner.device, runner.dtype),
                                     full_runner.image_features.encoder.encode(images, runner.device, runner.dtype),
                                     strict=True):
            assert torch.equal(ours, unquantized)
    text_error = (_prompt_logprobs(quantized["text"]) - _prompt_logprobs(full["text"])).abs().max()
    assert 0 < text_error < 0.2  # the quantization's own error, on a prompt without images
    for name in requests:
        error = (_prompt_logprobs(quantized[name]) - _prompt_logprobs(full[name])).abs().max()
        assert error <= 2 * text_error, name
        if method == "int8":  # fp8's 3-bit mantissa flips the random tiny model's answers, the text one's too
            assert quantized[name].new_token_ids == full[name].new_token_ids, name
    assert runner.image_features.images_encoded == len(images)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize(("method", "group_size"), [("int8", None), ("int4", 32)])
def test_pitstop_engine_quantize_keeps_the_vision_weights(family: str, method: str, group_size: int | None,
                                                          tmp_path: Path, request: pytest.FixtureRequest) -> None:
    fixture, make_requests = FAMILIES[family]
    model_dir: Path = request.getfixturevalue(fixture)
    out = tmp_path / "quantized"
    args = ["engine", "quantize", "--model", str(model_dir), "--out", str(out), "--quantization", method]
    assert cli_main(args + (["--group-size", str(group_size)] if group_size else [])) == 0
    source, written = _vision_tensors(model_dir), _vision_tensors(out)
    assert source and written.keys() == source.keys()
    assert all(torch.equal(written[name], tensor) for name, tensor in source.items())  # copied as they are
    ignore = json.loads((out / "config.json").read_text())["quantization_config"]["ignore"]
    assert ignore[1:] == (["re:.*visual.*"] if family == "qwen2_5_vl"
                          else ["re:.*vision_tower.*", "re:.*multi_modal_projector.*"])
    requests = make_requests(model_dir)
    served, runner = _served(out, requests)  # no flag: the checkpoint says
    assert runner.quantization == method and runner.image_features is not None
    linear = QuantizedLinear if method == "int8" else Int4Linear
    assert any(isinstance(m, linear) for m in runner.model.modules())
    if method == "int8":  # the same rounding as the flag's: the same answers, images included
        flagged, _ = _served(model_dir, requests, method)
        for name in requests:
            assert served[name].new_token_ids == flagged[name].new_token_ids, name
            assert torch.equal(_prompt_logprobs(served[name]), _prompt_logprobs(flagged[name])), name
    else:  # no int4 flag at this width (groups of 128): the unquantized answers, within int4's error
        full, _ = _served(model_dir, requests)
        errors = {name: (_prompt_logprobs(served[name]) - _prompt_logprobs(full[name])).abs().max() for name in requests}
        assert all(errors[name] <= 2 * errors["text"] for name in requests), errors
    assert runner.image_features.images_encoded == sum(len(images) for _, images in requests.values())


def test_a_checkpoint_that_quantized_its_tower_is_refused(tiny_llava_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "quantized"
    assert cli_main(["engine", "quantize", "--model", str(tiny_llava_dir), "--out", str(out),
                     "--quantization", "int8"]) == 0
    [path] = safetensors_files(out)
    tensors = load_file(path)
    name = next(n for n in tensors if n.startswith(VISION_PREFIXES) and n.endswith("q_proj.weight"))
    tensors[name.removesuffix("weight") + "weight_scale"] = torch.ones(tensors[name].shape[0], 1)
    save_file(tensors, path, metadata={"format": "pt"})
    with pytest.raises(ValueError, match="quantized its vision tower or projector .*weight_scale"):
        TorchModelRunner(out, 8, 16, device="cpu")


def test_a_quantized_llava_checkpoint_served_answers_an_image(tiny_llava_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "quantized"
    assert cli_main(["engine", "quantize", "--model", str(tiny_llava_dir), "--out", str(out),
                     "--quantization", "fp8"]) == 0
    content = [{"type": "text", "text": "What is in this picture?"},
               {"type": "image_url", "image_url": {"url": data_url(picture(4))}}]
    with engine_server(out, num_blocks=64) as url:
        answer = sdk(url).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": content}], max_tokens=6, temperature=0,
            extra_body={"return_token_ids": True, "ignore_eos": True}).model_dump()
    prompt = answer["prompt_token_ids"]
    image_token = vision_config(tiny_llava_dir).image_token_id
    from engine.openai_images import image_processor

    pixels = image_processor(tiny_llava_dir)(images=[picture(4)], return_tensors="pt")["pixel_values"][0]
    image = ImageInput(prompt.index(image_token), 16, 0, pixels)
    assert answer["usage"]["prompt_tokens"] == len(prompt) and prompt.count(image_token) == image.length
    expected, _ = _served(tiny_llava_dir, {"a": (prompt, [image])}, "fp8")  # the flag's engine, in process
    assert answer["choices"][0]["token_ids"] == expected["a"].new_token_ids
