"""Regenerate ``modeling_georsclip/tokenizer_data`` from the OpenAI CLIP BPE merge list.

The merge list ``bpe_simple_vocab_16e6.txt.gz`` ships inside the ``open_clip_torch`` wheel (data, not
code). This script turns it into the Hugging Face tokenizer files (vocab.json, merges.txt, tokenizer.json,
tokenizer_config.json) in the order OpenAI's tokenizer assigns ids: 256 byte symbols, the same symbols
with ``</w>``, the 48,894 merges, then ``<|startoftext|>`` (49406) and ``<|endoftext|>`` (49407).

Usage: python scripts/build_tokenizer_data.py [--bpe PATH] [--output DIR]
"""

from __future__ import annotations

import argparse
import gzip
import json
from pathlib import Path

from transformers import CLIPTokenizer
from transformers.convert_slow_tokenizer import bytes_to_unicode

N_MERGES = 49152 - 256 - 2  # OpenAI CLIP: 48,894 merges (lines 1..48894 after the version header)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--bpe", help="path to bpe_simple_vocab_16e6.txt.gz (default: the installed open_clip's)")
    parser.add_argument("--output", default=str(Path(__file__).parents[1] / "modeling_georsclip" / "tokenizer_data"))
    args = parser.parse_args()
    if args.bpe is None:
        import importlib.util

        spec = importlib.util.find_spec("open_clip")
        args.bpe = str(Path(spec.origin).parent / "bpe_simple_vocab_16e6.txt.gz")
    lines = gzip.open(args.bpe, "rt", encoding="utf-8").read().split("\n")
    merges = [tuple(line.split()) for line in lines[1 : N_MERGES + 1]]
    symbols = list(bytes_to_unicode().values())
    vocab_list = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges]
    vocab_list += ["<|startoftext|>", "<|endoftext|>"]
    vocab = {token: i for i, token in enumerate(vocab_list)}
    assert len(vocab) == 49408, len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=merges, model_max_length=77)
    out = Path(args.output)
    out.mkdir(parents=True, exist_ok=True)
    tokenizer.save_pretrained(out)
    (out / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False) + "\n", encoding="utf-8")
    (out / "merges.txt").write_text(
        "#version: 0.2\n" + "\n".join(" ".join(m) for m in merges) + "\n", encoding="utf-8"
    )
    (out / "tokenizer.json").unlink(missing_ok=True)  # rebuilt from vocab/merges at load time (faster)
    print(f"wrote {sorted(p.name for p in out.iterdir())} to {out}")


if __name__ == "__main__":
    main()
