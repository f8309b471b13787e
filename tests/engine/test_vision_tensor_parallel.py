"""Image inputs on two tensor-parallel CPU ranks: rank 0 alone holds the vision encoder (one copy) and sends each
step's image features and their rows with the step's inputs (engine/tp_workers.py StepInputs), with M-RoPE's
positions (Qwen2.5-VL) and Gemma 3's bidirectional image spans, so every rank splices and masks alike: greedy
answers and logprobs of image and text requests in one batch equal one rank's, for LLaVA, Gemma 3 and
Qwen2.5-VL, and for an int8 LLaVA as one int8 rank; over HTTP, a two-rank LLaVA answers an image as
transformers does."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from engine.config import EngineConfig
from engine.image_inputs import ImageInput
from engine.llm_engine import LLMEngine
from engine.openai_images import image_processor
from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.torch_runner import TorchModelRunner
from tests.engine import llava_inputs
from tests.engine.llava_inputs import data_url, run
from tests.engine.serving import engine_server, sdk
from tests.engine.vision_families import FAMILIES, Requests, llava_requests

PARAMS = SamplingParams(max_tokens=6, temperature=0.0, ignore_eos=True, logprobs=3)


def _answers(model_dir: Path, requests: Requests, tp: int, chunk: int = 512, quantization: str | None = None
             ) -> tuple[dict[str, RequestOutput], int]:
    """Each request's output and how many images rank 0 encoded."""
    runner = TorchModelRunner(model_dir, 48, 16, device="cpu", tensor_parallel_size=tp, quantization=quantization)
    try:
        engine = LLMEngine(EngineConfig(num_blocks=48, max_model_len=512, long_prefill_token_threshold=chunk,
                                        max_num_batched_tokens=max(chunk, 64)), runner)
        outs = run(engine, requests, PARAMS)
        assert runner.image_features is not None
        if runner.workers is not None:  # the encoder's one copy is rank 0's
            assert runner.workers.call("__getattribute__", "image_features") == [None]
        return outs, runner.image_features.images_encoded
    finally:
        runner.close()


@pytest.mark.parametrize("family", FAMILIES)
def test_two_ranks_answer_images_as_one(family: str, request: pytest.FixtureRequest) -> None:
    fixture, make_requests = FAMILIES[family]
    model_dir: Path = request.getfixturevalue(fixture)
    requests = make_requests(model_dir)
    one, encoded_one = _answers(model_dir, requests, tp=1)
    two, encoded_two = _answers(model_dir, requests, tp=2)
    assert encoded_two == encoded_one == sum(len(images) for _, images in requests.values())
    for name in requests:
        assert two[name].new_token_ids == one[name].new_token_ids, name
        torch.testing.assert_close(torch.tensor([lp.top_logprobs for lp in two[name].logprobs]),
                                   torch.tensor([lp.top_logprobs for lp in one[name].logprobs]), atol=1e-4, rtol=0)
    images = [name for name in requests if requests[name][1]]  # the pictures change the answer on both
    assert any(two[name].new_token_ids != two["text"].new_token_ids for name in images)


def test_an_image_cut_across_prefill_chunks_on_two_ranks(tiny_llava_dir: Path) -> None:
    """Chunks of 7 cut the image in three: each chunk's part of the one encoding reaches rank 1."""
    requests = {"image": llava_requests(tiny_llava_dir)["image"]}
    two, encoded = _answers(tiny_llava_dir, requests, tp=2, chunk=7)
    assert encoded == 1
    assert two["image"].new_token_ids == _answers(tiny_llava_dir, requests, tp=1)[0]["image"].new_token_ids


def test_two_int8_ranks_answer_images_as_one_int8_rank(tiny_llava_dir: Path) -> None:
    """Sharded and quantized at once: each rank quantizes its shard's rows (per-row scales cut as the rows are)."""
    requests = llava_requests(tiny_llava_dir)
    one, _ = _answers(tiny_llava_dir, requests, tp=1, quantization="int8")
    two, encoded = _answers(tiny_llava_dir, requests, tp=2, quantization="int8")
    assert encoded == 3
    for name in requests:
        assert two[name].new_token_ids == one[name].new_token_ids, name


def test_a_two_rank_server_answers_an_image_as_transformers(tiny_llava_dir: Path) -> None:
    content = [{"type": "text", "text": "What is in this picture?"},
               {"type": "image_url", "image_url": {"url": data_url(llava_inputs.picture(4))}}]
    with engine_server(tiny_llava_dir, tensor_parallel_size=2, num_blocks=64) as url:
        answer = sdk(url).chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": content}], max_tokens=6, temperature=0,
            extra_body={"return_token_ids": True, "ignore_eos": True}).model_dump()
    prompt = answer["prompt_token_ids"]
    pixels = image_processor(tiny_llava_dir)(images=[llava_inputs.picture(4)], return_tensors="pt")["pixel_values"]
    expected, _ = llava_inputs.transformers_answer(tiny_llava_dir, prompt, [ImageInput(0, 16, 0, pixels[0])],
                                                   max_new_tokens=6)
    assert answer["choices"][0]["token_ids"] == expected
