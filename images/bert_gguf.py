"""A BERT sentence-embedding model (safetensors + tokenizer.json) written as a GGUF file.

llama.cpp serves BERT models for embeddings; its converter (``convert_hf_to_gguf.py``)
needs torch and transformers. This one needs only ``safetensors`` and ``gguf`` (the
package llama.cpp publishes for its file format), and does the same for the one family
Somnus ships (all-MiniLM-L6-v2):

* tensors are renamed by ``gguf``'s own BERT name map; the pooler and ``position_ids``
  are dropped (llama.cpp pools itself);
* every tensor stays F32, as the safetensors hold it: the model is small (90 MB), and F32
  embeds ~1.5x faster than F16 here (419 against 283 tokens/s on the host; under TCG the
  F16 conversions are emulated too), bit for bit the reference's weights;
* the WordPiece vocabulary becomes llama.cpp's "phantom space" form: a word-initial
  piece gets a leading U+2581, a ``##`` continuation loses its ``##``, special tokens
  stay as they are;
* pooling (mean, from ``1_Pooling/config.json``) and non-causal attention are recorded,
  so llama.cpp pools and normalises without being told.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import gguf
import numpy as np
from safetensors.numpy import load_file

from core.errors import ImageBuildError

# Tensors llama.cpp does not use for embeddings.
_SKIPPED = ("embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias")
_POOLING = {
    "pooling_mode_mean_tokens": gguf.PoolingType.MEAN,
    "pooling_mode_cls_token": gguf.PoolingType.CLS,
}
_SPECIAL_TYPES = ("unk", "sep", "pad", "mask")
# llama.cpp's own name for the uncased BERT WordPiece pre-tokenizer (bge, MiniLM).
_TOKENIZER_PRE = "bert-bge"


def convert(model_dir: Path, out: Path, name: str) -> None:
    """Write ``out`` (GGUF) from a sentence-transformers BERT folder."""
    config = _json(model_dir / "config.json")
    if config.get("model_type") != "bert":
        raise ImageBuildError(f"{model_dir}: model_type {config.get('model_type')!r}, not bert")
    writer = gguf.GGUFWriter(str(out), gguf.MODEL_ARCH_NAMES[gguf.MODEL_ARCH.BERT])
    writer.add_name(name)
    writer.add_context_length(int(config["max_position_embeddings"]))
    writer.add_embedding_length(int(config["hidden_size"]))
    writer.add_feed_forward_length(int(config["intermediate_size"]))
    writer.add_block_count(int(config["num_hidden_layers"]))
    writer.add_head_count(int(config["num_attention_heads"]))
    writer.add_layer_norm_eps(float(config["layer_norm_eps"]))
    writer.add_causal_attention(False)
    writer.add_pooling_type(_pooling(model_dir))
    writer.add_file_type(gguf.LlamaFileType.ALL_F32)
    _add_vocab(writer, model_dir, int(config.get("type_vocab_size", 1)))
    _add_tensors(writer, model_dir, int(config["num_hidden_layers"]))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ImageBuildError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ImageBuildError(f"{path}: not a JSON object")
    return data


def _pooling(model_dir: Path) -> gguf.PoolingType:
    pooling = _json(model_dir / "1_Pooling" / "config.json")
    for key, kind in _POOLING.items():
        if pooling.get(key):
            return kind
    raise ImageBuildError(f"{model_dir}: pooling {pooling} is neither mean nor CLS")


def _add_vocab(writer: gguf.GGUFWriter, model_dir: Path, type_vocab_size: int) -> None:
    tokenizer = _json(model_dir / "tokenizer.json")
    model = tokenizer.get("model")
    if not isinstance(model, dict) or model.get("type") != "WordPiece":
        raise ImageBuildError(f"{model_dir}/tokenizer.json: not a WordPiece tokenizer")
    vocab: dict[str, int] = model["vocab"]
    tokens = [""] * len(vocab)
    for piece, token_id in vocab.items():
        tokens[token_id] = piece
    added = tokenizer.get("added_tokens") or []
    special = {t["content"] for t in added if isinstance(t, dict) and t.get("special")}
    types = [gguf.TokenType.CONTROL if t in special else gguf.TokenType.NORMAL for t in tokens]
    writer.add_token_type_count(type_vocab_size)
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre(_TOKENIZER_PRE)
    writer.add_token_list([_phantom(t, k) for t, k in zip(tokens, types, strict=True)])
    writer.add_token_types(types)
    # [CLS] ... [SEP], [UNK], [PAD], [MASK] from tokenizer_config.json and friends.
    # (llama.cpp has no [CLS] key: it is the BOS of a WordPiece vocabulary by default.)
    gguf.SpecialVocab(model_dir, n_vocab=len(tokens), special_token_types=_SPECIAL_TYPES
                      ).add_to_gguf(writer)


def _phantom(piece: str, kind: gguf.TokenType) -> str:
    if kind == gguf.TokenType.CONTROL:
        return piece
    return piece[2:] if piece.startswith("##") else "\u2581" + piece


def _add_tensors(writer: gguf.GGUFWriter, model_dir: Path, blocks: int) -> None:
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, blocks)
    for hf_name, data in load_file(str(model_dir / "model.safetensors")).items():
        if hf_name.removeprefix("bert.") in _SKIPPED:
            continue
        name = names.get_name(hf_name.removeprefix("bert."), try_suffixes=(".weight", ".bias"))
        if name is None:
            raise ImageBuildError(f"{model_dir}: no GGUF name for tensor {hf_name}")
        writer.add_tensor(name, data.astype(np.float32))
