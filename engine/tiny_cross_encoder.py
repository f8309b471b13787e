"""make_tiny_cross_encoder: a small random cross-encoder (a reranker) written as a real Hugging Face folder,
fully offline: a *ForSequenceClassification config with one label, its random weights (transformers' own
classes initialise them), and the family's tokenizer trained on the tiny LM's local corpus
(engine/tiny_model.py): WordPiece for BERT ([CLS] q [SEP] d [SEP], as cross-encoder/ms-marco-*), byte-level
BPE for RoBERTa and a Unigram model for XLM-RoBERTa (<s> q </s></s> d </s>, as BAAI/bge-reranker-*).
transformers loads it as it would a Hub reranker; engine/cross_encoder.py serves it."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from tokenizers import Tokenizer, pre_tokenizers
from tokenizers.models import BPE, Unigram, WordPiece
from tokenizers.trainers import BpeTrainer, UnigramTrainer, WordPieceTrainer
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    BertTokenizer,
    RobertaConfig,
    RobertaForSequenceClassification,
    RobertaTokenizer,
    XLMRobertaConfig,
    XLMRobertaForSequenceClassification,
    XLMRobertaTokenizer,
)

from engine.tiny_model import corpus_lines

_BERT_SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
_ROBERTA_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # ids 0..4, padding_idx 1 as RoBERTa's


def make_tiny_cross_encoder(out_dir: str | Path, family: str = "bert", layers: int = 2, hidden: int = 64,
                            heads: int = 4, vocab_size: int = 2000, max_positions: int = 128, seed: int = 0) -> Path:
    """`family`: bert, roberta or xlm-roberta. `max_positions`: the longest pair it reads, in tokens."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = _tokenizer(family, vocab_size, max_positions)
    shape = {"vocab_size": len(tokenizer), "hidden_size": hidden, "num_hidden_layers": layers,
             "num_attention_heads": heads, "intermediate_size": 4 * hidden, "num_labels": 1,
             "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
             "initializer_range": 0.2}  # ten times BERT's: scores that differ visibly between pairs
    torch.manual_seed(seed)
    if family == "bert":
        model = BertForSequenceClassification(BertConfig(**shape, max_position_embeddings=max_positions,
                                                         pad_token_id=tokenizer.pad_token_id))
    else:  # RoBERTa counts positions from padding_idx + 1: two more than it reads
        config_class, model_class = ((RobertaConfig, RobertaForSequenceClassification) if family == "roberta"
                                     else (XLMRobertaConfig, XLMRobertaForSequenceClassification))
        model = model_class(config_class(**shape, max_position_embeddings=max_positions + 2, type_vocab_size=1,
                                         pad_token_id=tokenizer.pad_token_id, bos_token_id=0, eos_token_id=2))
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return out


def _tokenizer(family: str, vocab_size: int, max_positions: int):
    lines = corpus_lines()
    if family == "bert":
        wordpiece = Tokenizer(WordPiece(unk_token="[UNK]"))
        wordpiece.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        wordpiece.train_from_iterator((line.lower() for line in lines),
                                      WordPieceTrainer(vocab_size=vocab_size, special_tokens=_BERT_SPECIALS,
                                                       show_progress=False))
        return BertTokenizer(vocab=wordpiece.get_vocab(), model_max_length=max_positions)
    if family == "roberta":
        bpe = Tokenizer(BPE())
        bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bpe.train_from_iterator(lines, BpeTrainer(vocab_size=vocab_size, special_tokens=_ROBERTA_SPECIALS,
                                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                  show_progress=False))
        model = json.loads(bpe.to_str())["model"]
        merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in model["merges"]]
        return RobertaTokenizer(vocab=model["vocab"], merges=merges, model_max_length=max_positions)
    unigram = Tokenizer(Unigram())
    unigram.pre_tokenizer = pre_tokenizers.Metaspace()
    unigram.train_from_iterator(lines, UnigramTrainer(vocab_size=vocab_size, special_tokens=_ROBERTA_SPECIALS,
                                                      unk_token="<unk>", show_progress=False))
    pieces = [tuple(piece) for piece in json.loads(unigram.to_str())["model"]["vocab"]]
    return XLMRobertaTokenizer(vocab=pieces, model_max_length=max_positions)
