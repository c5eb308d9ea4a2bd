"""Build the real CLIP BPE tokenizer (49,408 tokens) offline from open_clip's bundled vocabulary.

No Hub access is needed: open_clip ships ``bpe_simple_vocab_16e6.txt.gz`` (the OpenAI CLIP merges).
The vocabulary is reconstructed exactly like OpenAI CLIP / open_clip do it (bytes, bytes + ``</w>``,
joined merges, then ``<|startoftext|>`` and ``<|endoftext|>``), written as ``vocab.json`` +
``merges.txt`` and loaded with ``CLIPTokenizer.from_pretrained(out_dir)``.
"""

from __future__ import annotations

import gzip
import json
import os
from pathlib import Path

CLIP_VOCAB_SIZE = 49408
_NUM_MERGES = 49152 - 256 - 2


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> unicode table used by GPT-2 / CLIP BPE."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(2**8):
        if b not in bs:
            bs.append(b)
            cs.append(2**8 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs]))


def _bpe_path() -> str:
    import open_clip  # noqa: WPS433 (optional heavy import)

    path = os.path.join(os.path.dirname(os.path.abspath(open_clip.__file__)), "bpe_simple_vocab_16e6.txt.gz")
    if not os.path.exists(path):
        raise FileNotFoundError(f"open_clip's CLIP vocabulary was not found at {path}")
    return path


def write_clip_tokenizer_files(out_dir: str | os.PathLike, model_max_length: int = 77) -> Path:
    """Write ``vocab.json``, ``merges.txt`` and the tokenizer configs of the CLIP tokenizer into ``out_dir``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    lines = gzip.open(_bpe_path()).read().decode("utf-8").split("\n")
    merges = [tuple(line.split()) for line in lines[1 : _NUM_MERGES + 1]]
    vocab = list(_bytes_to_unicode().values())
    vocab = vocab + [v + "</w>" for v in vocab]
    vocab.extend("".join(m) for m in merges)
    vocab.extend(["<|startoftext|>", "<|endoftext|>"])
    if len(vocab) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"CLIP vocabulary has {len(vocab)} tokens, expected {CLIP_VOCAB_SIZE}")
    encoder = {tok: i for i, tok in enumerate(vocab)}
    (out / "vocab.json").write_text(json.dumps(encoder, ensure_ascii=False), encoding="utf-8")
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    special = {
        "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>",
        "unk_token": "<|endoftext|>",
        "pad_token": "<|endoftext|>",
    }
    (out / "special_tokens_map.json").write_text(json.dumps(special, indent=2), encoding="utf-8")
    config = dict(special, tokenizer_class="CLIPTokenizer", model_max_length=int(model_max_length),
                  do_lower_case=True, errors="replace", clean_up_tokenization_spaces=False)
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return out


def build_clip_tokenizer(out_dir: str | os.PathLike, model_max_length: int = 77):
    """Write the CLIP tokenizer files into ``out_dir`` and return ``CLIPTokenizer.from_pretrained(out_dir)``.

    Offline; the result is the 49,408-token OpenAI CLIP tokenizer (bos 49406, eos/pad 49407).
    Save it elsewhere with ``tokenizer.save_pretrained(path)``.
    """
    from transformers import CLIPTokenizer

    out = write_clip_tokenizer_files(out_dir, model_max_length=model_max_length)
    tokenizer = CLIPTokenizer.from_pretrained(str(out))
    if len(tokenizer) != CLIP_VOCAB_SIZE:
        raise RuntimeError(f"CLIP tokenizer loaded with {len(tokenizer)} tokens, expected {CLIP_VOCAB_SIZE}")
    return tokenizer
