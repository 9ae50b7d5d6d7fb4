"""retrieval_recall and accuracy against clip_benchmark itself (installed reference library)."""


import numpy as np
import pytest
import torch
from clip_benchmark.metrics import zeroshot_retrieval
from sklearn.metrics import top_k_accuracy_score

from modeling_georsclip.metrics import EmbeddingSimilarity, accuracy, retrieval_recall
from modeling_georsclip.resources import package_path

MODULES = package_path("metrics", "modules")


def multi_caption_data(seed, n_images=40, dim=16, quantize=None):
    """Unit embeddings; each image has 1-6 captions (like RSICD's 5, with a few images short)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=g), dim=-1)
    owner = torch.repeat_interleave(torch.arange(n_images), torch.randint(1, 7, (n_images,), generator=g))
    texts = torch.nn.functional.normalize(images[owner] + 1.2 * torch.randn(len(owner), dim, generator=g), dim=-1)
    scores = texts @ images.T
    if quantize:
        scores = torch.round(scores * quantize) / quantize  # many exact ties
    return texts, images, owner, scores


def clip_benchmark_recall(scores, owner, ks=(1, 5, 10), batch_size=7):
    """clip_benchmark's own recall_at_k/batchify loop (what its evaluate() does after embedding)."""
    positive = torch.zeros_like(scores, dtype=torch.bool)
    positive[torch.arange(len(scores)), owner] = True
    out = {}
    for k in ks:
        rk = zeroshot_retrieval.recall_at_k
        out[f"t2i_R@{k}"] = 100 * (zeroshot_retrieval.batchify(rk, scores, positive, batch_size, "cpu", k=k) > 0).double().mean().item()
        out[f"i2t_R@{k}"] = 100 * (zeroshot_retrieval.batchify(rk, scores.T, positive.T, batch_size, "cpu", k=k) > 0).double().mean().item()
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_clip_benchmark_recall_at_k(seed):
    _, _, owner, scores = multi_caption_data(seed)
    ref = clip_benchmark_recall(scores, owner)
    ours = retrieval_recall(scores, owner, chunk_elements=300)  # forces many row chunks
    for key, value in ref.items():
        assert ours[key] == pytest.approx(value, abs=1e-9), key
    assert ours["mR"] == pytest.approx(np.mean([ref[k] for k in ref]))
    # numpy input, float64, and one big chunk give the same numbers
    assert retrieval_recall(scores.double().numpy(), owner.numpy()) == pytest.approx(ours)


def test_matches_clip_benchmark_evaluate_end_to_end():
    """Through clip_benchmark's evaluate(): a stand-in model whose 'encoders' return fixed embeddings."""
    texts, images, owner, _ = multi_caption_data(3, n_images=30)

    class FixedEmbeddings(torch.nn.Module):
        def encode_image(self, x):
            return x

        def encode_text(self, x):
            return x

    captions = [[str(t) for t in torch.nonzero(owner == i).flatten().tolist()] for i in range(len(images))]
    batches = [(images[s : s + 8], captions[s : s + 8]) for s in range(0, len(images), 8)]
    tokenizer = lambda strings: texts[[int(s) for s in strings]]  # noqa: E731
    ref = zeroshot_retrieval.evaluate(FixedEmbeddings(), batches, tokenizer, "cpu", amp=False, recall_k_list=[1, 5, 10])
    ours = retrieval_recall(EmbeddingSimilarity(texts, images), owner, chunk_elements=100)
    for k in (1, 5, 10):
        assert ours[f"t2i_R@{k}"] == pytest.approx(100 * ref[f"image_retrieval_recall@{k}"], abs=1e-4)
        assert ours[f"i2t_R@{k}"] == pytest.approx(100 * ref[f"text_retrieval_recall@{k}"], abs=1e-4)


@pytest.mark.parametrize("seed", [4, 5])
def test_ties_bracket_clip_benchmark(seed):
    """With exact ties torch.topk's choice is arbitrary: clip_benchmark lies between our two tie rules."""
    _, _, owner, scores = multi_caption_data(seed, quantize=4)
    ref = clip_benchmark_recall(scores, owner)
    optimistic = retrieval_recall(scores, owner, chunk_elements=500)
    pessimistic = retrieval_recall(scores, owner, chunk_elements=500, ties="pessimistic")
    assert any(pessimistic[k] < optimistic[k] for k in ref)  # the data really has decisive ties
    for key, value in ref.items():
        assert pessimistic[key] - 1e-9 <= value <= optimistic[key] + 1e-9, key


def test_hand_checked_small_case():
    # 3 captions, 2 images; caption 2 (image 0) ranks image 1 first.
    scores = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.3, 0.7]])
    out = retrieval_recall(scores, [0, 1, 0], ks=(1, 2))
    assert out["t2i_R@1"] == pytest.approx(200 / 3) and out["t2i_R@2"] == 100
    # image 0: best caption 0 (0.9) is first -> hit; image 1: caption 1 (0.8) first -> hit
    assert out["i2t_R@1"] == 100 and out["mR"] == pytest.approx((200 / 3 + 300) / 4)


def test_image_without_caption_is_a_miss_and_bad_input_is_rejected():
    scores = torch.tensor([[0.9, 0.1, 0.0]])
    assert retrieval_recall(scores, [0], ks=(1,))["i2t_R@1"] == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="entries but similarity has 1 rows"):
        retrieval_recall(scores, [0, 1])
    with pytest.raises(ValueError, match="outside"):
        retrieval_recall(scores, [3])


def test_accuracy_matches_sklearn_and_the_clip_benchmark_rule():
    g = torch.Generator().manual_seed(0)
    logits, labels = torch.randn(500, 30, generator=g), torch.randint(0, 30, (500,), generator=g)
    # clip_benchmark's and open_clip_train's accuracy() crash on numpy 2 (float() of a 1-element array), so
    # their top-k rule is applied here as written there, and scikit-learn gives an independent reference.
    ref_sk = [top_k_accuracy_score(labels.numpy(), logits.numpy(), k=k, labels=range(30)) for k in (1, 5)]
    pred = logits.topk(5, 1, True, True)[1].t()
    correct = pred.eq(labels.view(1, -1).expand_as(pred))
    ref_cb = [correct[:k].reshape(-1).float().sum().item() / len(labels) for k in (1, 5)]
    ours = accuracy(logits.numpy(), labels.numpy(), topk=(1, 5))
    assert ours["top1"] == pytest.approx(100 * ref_sk[0]) == pytest.approx(100 * ref_cb[0])
    assert ours["top5"] == pytest.approx(100 * ref_sk[1]) == pytest.approx(100 * ref_cb[1])
    assert accuracy([[0.2, 0.8], [0.6, 0.4]], [1, 1], topk=(1, 5)) == {"top1": 50.0, "top5": 100.0}


def test_evaluate_modules_match_python_api():
    import evaluate

    _, _, owner, scores = multi_caption_data(6, n_images=12)
    recall = evaluate.load(str(MODULES / "retrieval_recall"))
    got = recall.compute(similarity=scores.numpy().tolist(), text_to_image=owner.tolist(), ks=[1, 5])
    assert got == pytest.approx(retrieval_recall(scores, owner, ks=(1, 5)))

    logits, labels = torch.randn(40, 7), torch.randint(0, 7, (40,))
    acc = evaluate.load(str(MODULES / "zeroshot_accuracy"))
    got = acc.compute(predictions=logits.numpy().tolist(), references=labels.tolist(), topk=[1, 5])
    assert got == pytest.approx(accuracy(logits, labels, topk=(1, 5)))
