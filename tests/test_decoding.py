from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from dhnn.decoding import beam_search, beam_search_indices
from dhnn.taxonomy import IGNORE_INDEX, Taxonomy

SLIDE = Taxonomy.from_paths([["A", "C"], ["A", "D"], ["B", "E"], ["B", "F"], ["B", "G"]])


def test_slide_algorithm_1() -> None:
    o1 = torch.tensor([[0.3, 0.4]])
    o2 = torch.tensor([[0.0, 0.1, 0.1, 0.2, 0.5]])
    paths, scores = beam_search([o1, o2], SLIDE, beam_width=1)
    assert paths == [[["B", "G"]]]
    assert scores[0].tolist() == pytest.approx([0.4 * 0.5])
    indices, _ = beam_search_indices([o1, o2], SLIDE, beam_width=1)
    assert indices.tolist() == [[[1, 4]]]


def test_beam_beats_greedy() -> None:
    tax = Taxonomy.from_paths([["A", "C"], ["A", "D"], ["B", "E"], ["B", "F"]])
    o1 = torch.tensor([[0.6, 0.4]])
    o2 = torch.tensor([[0.45, 0.4, 0.95, 0.05]])
    greedy, greedy_scores = beam_search([o1, o2], tax, beam_width=1)
    beam, beam_scores = beam_search([o1, o2], tax, beam_width=2)
    assert greedy[0] == [["A", "C"]]
    assert greedy_scores[0].tolist() == pytest.approx([0.6 * 0.45])
    assert beam[0] == [["B", "E"], ["A", "C"]]
    assert beam_scores[0].tolist() == pytest.approx([0.4 * 0.95, 0.6 * 0.45])


def test_a_beam_can_lose_to_greedy() -> None:
    """A beam is not an exhaustive search: when k better prefixes push the greedy prefix out, the beam
    can end below greedy (hypothesis found such a case for an assertion that claimed otherwise)."""
    tax = Taxonomy.from_paths([["A", "A1", "a1"], ["A", "A2", "a2"], ["B", "B1", "b1"], ["B", "B2", "b2"]])
    probs = [torch.tensor([[0.6, 0.4]]), torch.tensor([[0.2, 0.0, 0.4, 0.4]]), torch.tensor([[0.9, 0.0, 0.05, 0.05]])]
    beam = beam_search_indices(probs, tax, beam_width=2)[1][0, 0].item()
    greedy = beam_search_indices(probs, tax, beam_width=1)[1][0, 0].item()
    assert beam == pytest.approx(0.4 * 0.4 * 0.05) and greedy == pytest.approx(0.6 * 0.2 * 0.9)
    exhaustive = beam_search_indices(probs, tax, beam_width=4)[1][0, 0].item()
    assert exhaustive == pytest.approx(greedy)  # a beam as wide as the widest level is exact


def test_variable_depth_and_padding() -> None:
    # "L" is a leaf at level 1: once chosen it competes unchanged with the extended paths.
    tax = Taxonomy.from_paths([["L"], ["A", "C"], ["A", "D"]])
    o1 = torch.tensor([[0.5, 0.5], [0.9, 0.1]], dtype=torch.float64)  # levels[0] = [L, A]
    o2 = torch.tensor([[0.9, 0.1], [0.9, 0.1]], dtype=torch.float64)  # levels[1] = [C, D]
    paths, scores = beam_search([o1, o2], tax, beam_width=5)
    assert paths[0] == [["L"], ["A", "C"], ["A", "D"]]
    assert paths[1] == [["L"], ["A", "C"], ["A", "D"]]
    assert scores[0].tolist() == pytest.approx([0.5, 0.45, 0.05, 0, 0])
    assert scores[1].tolist() == pytest.approx([0.9, 0.09, 0.01, 0, 0])
    indices, _ = beam_search_indices([o1, o2], tax, beam_width=5)
    assert indices[0].tolist() == [[0, IGNORE_INDEX], [1, 0], [1, 1]] + [[IGNORE_INDEX] * 2] * 2
    # Greedy commits to A; a width-2 beam keeps the finished path L, which ends up best.
    o1, o2 = torch.tensor([[0.4, 0.6]]), torch.tensor([[0.6, 0.4]])
    assert beam_search([o1, o2], tax, beam_width=1)[0] == [[["A", "C"]]]
    paths, scores = beam_search([o1, o2], tax, beam_width=2)
    assert paths == [[["L"], ["A", "C"]]]
    assert scores[0].tolist() == pytest.approx([0.4, 0.36])


def test_zero_probability_paths_are_real_paths() -> None:
    o1 = torch.tensor([[1.0, 0.0]])
    o2 = torch.tensor([[0.0, 0.0, 0.0, 0.0, 0.0]])
    paths, scores = beam_search([o1, o2], SLIDE, beam_width=5)
    assert len(paths[0]) == 5
    assert sorted(paths[0]) == [["A", "C"], ["A", "D"], ["B", "E"], ["B", "F"], ["B", "G"]]
    assert scores.abs().sum() == 0


@st.composite
def random_trees(draw: st.DrawFn, min_depth: int = 1, top_width: int = 3, width: int = 3) -> Taxonomy:
    """Random trees of depth min_depth-4, fixed-depth or ragged, nodes in shuffled order; nodes of the
    first two levels have up to ``top_width`` children, deeper ones up to ``width``."""
    max_depth = draw(st.integers(min_depth, 4))
    fixed = draw(st.booleans())
    names = iter(f"n{i}" for i in range(10_000))
    leaf_paths: list[list[str]] = []

    def grow(prefix: list[str]) -> None:
        for _ in range(draw(st.integers(1, top_width if len(prefix) < 2 else width))):
            path = prefix + [next(names)]
            if len(path) < max_depth and (fixed or draw(st.booleans())):
                grow(path)
            else:
                leaf_paths.append(path)

    grow([])
    return Taxonomy.from_paths(draw(st.permutations(leaf_paths)))


def trees() -> st.SearchStrategy[Taxonomy]:
    """Random small trees, depth 1-4, up to 3 children per node."""
    return random_trees()


def random_scores(tax: Taxonomy, batch: int, seed: int) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    scores = [torch.rand(batch, n, generator=g, dtype=torch.float64) + 0.01 for n in tax.level_sizes]
    return [s / s.sum(dim=1, keepdim=True) for s in scores]


def brute_force(level_scores: list[torch.Tensor], tax: Taxonomy, b: int) -> list[tuple[float, list[str]]]:
    ranked = []
    for leaf in tax.leaves:
        path = tax.path(leaf)
        prob = math.prod(level_scores[t][b, tax.index(n)].item() for t, n in enumerate(path))
        ranked.append((prob, path))
    return sorted(ranked, key=lambda x: -x[0])


@settings(max_examples=60, deadline=None)
@given(trees(), st.integers(0, 2**31 - 1), st.integers(0, 3))
def test_exhaustive_beam_matches_brute_force(tax: Taxonomy, seed: int, extra: int) -> None:
    batch = 3
    level_scores = random_scores(tax, batch, seed)
    k = len(tax.leaves) + extra
    paths, scores = beam_search(level_scores, tax, beam_width=k)
    assert scores.shape == (batch, k)
    for b in range(batch):
        expected = brute_force(level_scores, tax, b)
        assert paths[b] == [p for _, p in expected]
        torch.testing.assert_close(scores[b, : len(expected)],
                                   torch.tensor([s for s, _ in expected], dtype=scores.dtype))
        assert scores[b, len(expected):].abs().sum() == 0


@settings(max_examples=60, deadline=None)
@given(trees(), st.integers(0, 2**31 - 1), st.integers(1, 6))
def test_any_beam_gives_real_sorted_paths(tax: Taxonomy, seed: int, k: int) -> None:
    batch = 4
    level_scores = random_scores(tax, batch, seed)
    indices, scores = beam_search_indices(level_scores, tax, beam_width=k)
    paths, _ = beam_search(level_scores, tax, beam_width=k)
    leaf_paths = {tuple(tax.path(leaf)) for leaf in tax.leaves}
    assert indices.shape == (batch, k, tax.num_levels)
    for b in range(batch):
        assert 1 <= len(paths[b]) == min(k, len(leaf_paths))
        assert all(tuple(p) in leaf_paths for p in paths[b])
        assert len(set(map(tuple, paths[b]))) == len(paths[b])
        assert (scores[b, :-1] >= scores[b, 1:]).all()
        for j, p in enumerate(paths[b]):
            assert torch.equal(indices[b, j], tax.encode_path(p))
            expected = math.prod(level_scores[t][b, tax.index(n)].item() for t, n in enumerate(p))
            assert scores[b, j].item() == pytest.approx(expected)
        # The best beam can never be worse than greedy decoding.
        greedy_scores = beam_search_indices(level_scores, tax, beam_width=1)[1]
        assert scores[b, 0] >= greedy_scores[b, 0] - 1e-12


@settings(max_examples=30, deadline=None)
@given(trees(), st.integers(0, 2**31 - 1), st.integers(1, 4))
def test_batch_independence(tax: Taxonomy, seed: int, k: int) -> None:
    batch = 5
    level_scores = random_scores(tax, batch, seed)
    indices, scores = beam_search_indices(level_scores, tax, beam_width=k)
    for b in range(batch):
        one_idx, one_scores = beam_search_indices([s[b : b + 1] for s in level_scores], tax, k)
        assert torch.equal(one_idx[0], indices[b])
        torch.testing.assert_close(one_scores[0], scores[b])


def test_float32_and_empty_batch() -> None:
    o = [torch.rand(7, 2), torch.rand(7, 5)]
    indices, scores = beam_search_indices(o, SLIDE, beam_width=3)
    assert indices.shape == (7, 3, 2) and scores.dtype == torch.float32
    indices, scores = beam_search_indices([torch.rand(0, 2), torch.rand(0, 5)], SLIDE, 2)
    assert indices.shape == (0, 2, 2) and scores.shape == (0, 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu() -> None:
    o = [torch.rand(16, 2), torch.rand(16, 5)]
    cpu = beam_search_indices(o, SLIDE, 3)
    gpu = beam_search_indices([s.cuda() for s in o], SLIDE, 3)
    assert gpu[0].device.type == "cuda"
    assert torch.equal(gpu[0].cpu(), cpu[0])
    torch.testing.assert_close(gpu[1].cpu(), cpu[1])


@pytest.mark.parametrize("scores, width, message", [
    ([torch.rand(2, 2)], 1, r"expected 2 score tensors"),
    ([torch.rand(2, 3), torch.rand(2, 5)], 1, r"level 1: expected scores of shape \[B, 2\], got \[2, 3\]"),
    ([torch.rand(2, 2), torch.rand(3, 5)], 1, r"level 2: expected scores of shape \[2, 5\], got \[3, 5\]"),
    ([torch.rand(2, 2), torch.rand(5)], 1, r"level 2: expected scores of shape \[2, 5\], got \[5\]"),
    ([torch.rand(2, 2), torch.ones(2, 5, dtype=torch.long)], 1, r"level 2: expected floating-point"),
    ([torch.rand(2, 2), torch.rand(2, 5)], 0, r"beam_width must be an integer >= 1"),
    ([torch.rand(2, 2), torch.rand(2, 5)], 1.5, r"beam_width must be an integer >= 1"),
])
def test_validation(scores: list, width: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        beam_search_indices(scores, SLIDE, width)


def reference_beam(level_scores: list[torch.Tensor], tax: Taxonomy, b: int,
                   k: int) -> list[tuple[float, list[str]]]:
    """Per-sample beam search in plain Python: the same algorithm, one path at a time."""
    def prob(t: int, name: str) -> float:
        return level_scores[t][b, tax.index(name)].item()

    beams = sorted(((prob(0, n), [n]) for n in tax.levels[0]), key=lambda x: -x[0])[:k]
    for t in range(1, tax.num_levels):
        candidates = []
        for score, path in beams:
            kids = tax.children(path[-1])
            candidates += [(score * prob(t, c), path + [c]) for c in kids] if kids else [(score, path)]
        beams = sorted(candidates, key=lambda x: -x[0])[:k]
    return beams


def wide_trees() -> st.SearchStrategy[Taxonomy]:
    """Trees with up to 8 children per node, so that k * width is well above k."""
    return random_trees(min_depth=2, top_width=8, width=4)


@settings(max_examples=40, deadline=None)
@given(wide_trees(), st.integers(0, 2**31 - 1), st.integers(1, 8))
def test_matches_per_sample_reference(tax: Taxonomy, seed: int, k: int) -> None:
    batch = 4
    level_scores = random_scores(tax, batch, seed)
    paths, scores = beam_search(level_scores, tax, beam_width=k)
    for b in range(batch):
        expected = reference_beam(level_scores, tax, b, k)
        assert paths[b] == [p for _, p in expected]
        torch.testing.assert_close(scores[b, : len(expected)],
                                   torch.tensor([s for s, _ in expected], dtype=scores.dtype))


def test_chunked_batch_matches_whole(monkeypatch: pytest.MonkeyPatch) -> None:
    import dhnn.decoding as decoding

    tax = Taxonomy.from_paths([["L"], ["A", "C"], ["A", "D"], ["B", "E", "X"], ["B", "E", "Y"]])
    level_scores = random_scores(tax, 11, seed=3)
    whole = beam_search_indices(level_scores, tax, 3)
    monkeypatch.setattr(decoding, "_CHUNK", 4)
    chunked = beam_search_indices(level_scores, tax, 3)
    assert torch.equal(whole[0], chunked[0])
    assert torch.equal(whole[1], chunked[1])


def test_scores_stay_differentiable() -> None:
    tax = Taxonomy.from_paths([["L"], ["A", "C"], ["A", "D"], ["B", "E"]])
    logits = [torch.randn(3, n, dtype=torch.float64, requires_grad=True) for n in tax.level_sizes]
    probs = [x.softmax(dim=1) for x in logits]
    indices, scores = beam_search_indices(probs, tax, 5)  # 5 > 4 leaves: an empty slot too
    with torch.no_grad():
        plain = beam_search_indices(probs, tax, 5)
    assert torch.equal(indices, plain[0])
    torch.testing.assert_close(scores, plain[1], rtol=1e-12, atol=0)
    assert scores.requires_grad and scores[:, 4].abs().sum() == 0
    scores[:, 0].sum().backward()
    assert all(x.grad is not None and torch.isfinite(x.grad).all() for x in logits)
