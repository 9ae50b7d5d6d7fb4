"""Our tokenizer (package data + open_clip's caption cleaning) against ``open_clip.tokenize``."""

from __future__ import annotations

import open_clip
import pytest
import torch

from modeling_georsclip import GeoRSCLIPProcessor, load_tokenizer
from modeling_georsclip.testing import tiny_clip

from conftest import TEST_DATA

CAPTIONS = TEST_DATA / "rsitmd_test_caps.txt"
EOS, SOT, CONTEXT = 49407, 49406, 77


@pytest.fixture(scope="module")
def processor() -> GeoRSCLIPProcessor:
    return GeoRSCLIPProcessor.default()


def ours_as_open_clip(processor: GeoRSCLIPProcessor, captions: list[str]) -> torch.Tensor:
    """Our ids padded to 77, with HF's pad (49407 after the first EOS) mapped to open_clip's 0."""
    ids = processor(text=captions, padding="max_length", truncation=True, max_length=CONTEXT,
                    return_tensors="pt")["input_ids"].clone()
    first_eos = (ids == EOS).int().argmax(dim=1)
    positions = torch.arange(ids.shape[1]).unsqueeze(0)
    ids[positions > first_eos.unsqueeze(1)] = 0
    return ids


def test_all_rsitmd_test_captions_match_open_clip(processor):
    captions = CAPTIONS.read_text(encoding="utf-8").splitlines()
    assert len(captions) == 2260
    expected = open_clip.tokenize(captions, context_length=CONTEXT)
    got = ours_as_open_clip(processor, captions)
    mismatched = [i for i in range(len(captions)) if not torch.equal(got[i], expected[i])]
    assert mismatched == [], f"{len(mismatched)} captions differ, first: {captions[mismatched[0]]!r}"


def test_truncation_keeps_eos_last(processor):
    long_caption = " ".join(CAPTIONS.read_text(encoding="utf-8").splitlines()[:20])
    expected = open_clip.tokenize([long_caption])[0]
    got = ours_as_open_clip(processor, [long_caption])[0]
    assert torch.equal(got, expected)
    assert got[0] == SOT and got[-1] == EOS and (got == EOS).sum() == 1


@pytest.mark.parametrize("caption", [
    "planes &amp; hangars at the airport",
    "a baseball ﬁeld and a ﬂat roof",  # ligatures fixed by ftfy
    "  many   boats\n\tin the  harbour  ",
    "São Paulo: dense résidences near the río, 北京 airport",
    "mojibake: cafÃ© next to the parking lot",
    "&lt;b&gt;bold&lt;/b&gt; storage tanks",
    "",
    "🛰️ satellite view of a 🏟️ stadium",
])
def test_edge_cases_match_open_clip(processor, caption):
    assert torch.equal(ours_as_open_clip(processor, [caption])[0], open_clip.tokenize([caption])[0])


def test_vocabulary_and_special_tokens():
    tokenizer = load_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer.model_max_length == CONTEXT
    assert tokenizer.eos_token_id == EOS and tokenizer.bos_token_id == SOT
    assert tokenizer.convert_ids_to_tokens([SOT, EOS]) == ["<|startoftext|>", "<|endoftext|>"]


def test_text_features_do_not_depend_on_padding(processor):
    """EOS pooling: padding to the batch, to 77, or open_clip's 0-padding give the same text features."""
    model = tiny_clip(seed=1)
    captions = CAPTIONS.read_text(encoding="utf-8").splitlines()[:6] + ["a short one"]
    batch = model.text_embeddings(captions, processor)
    one_by_one = torch.cat([model.text_embeddings([c], processor) for c in captions])
    assert (batch - one_by_one).abs().max() < 1e-6
    with torch.no_grad():
        zero_padded = model.get_text_features(input_ids=open_clip.tokenize(captions)).pooler_output
    assert (torch.nn.functional.normalize(zero_padded, dim=-1) - batch).abs().max() < 1e-6
