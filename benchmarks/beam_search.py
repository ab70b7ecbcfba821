"""Beam search throughput: batched ``beam_search_indices`` against a per-sample reference.

Builds a seeded random tree with exactly 600 leaves, all at depth 4, draws per-level probability
tensors (softmax of random logits, float32) and times, in one run and with the same beam width:

* the batched, tree-constrained ``dhnn.decoding.beam_search_indices`` on N samples (one warm-up
  call, then the best of a few repeats, ``time.perf_counter``);
* a simple per-sample reference written here (same algorithm: keep the top-k level-1 nodes,
  extend each kept path only to its children, score = product of node probabilities, keep the
  top k) on fewer samples, in two flavours: plain Python on each sample's probabilities as
  Python floats (the faster of the two), and torch ops on each sample's tensors.

It checks that the batched search gives the same top-k paths as the references on their samples
(up to float32 near-ties) and prints samples/s of each and the ratios. Torch's thread count is
left at the machine's default; the load average is printed because other processes on a small
machine skew the numbers (a 2-thread torch op waits for both of its threads).

    python benchmarks/beam_search.py            # full run
    python benchmarks/beam_search.py --quick    # a few seconds (used by the tests)
"""

from __future__ import annotations

import argparse
import heapq
import math
import os
import random
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install

from dhnn.decoding import beam_search_indices  # noqa: E402
from dhnn.taxonomy import IGNORE_INDEX, Taxonomy  # noqa: E402

LEVEL_SIZES = (10, 40, 150, 600)  # the last level holds the 600 leaves


def random_tree(seed: int, sizes: tuple[int, ...] = LEVEL_SIZES) -> Taxonomy:
    """A random tree with len(sizes) levels and sizes[t] nodes at level t + 1, every leaf at the
    last level: each node gets at least one child, the remaining children go to random parents."""
    rng = random.Random(seed)
    paths: list[list[str]] = [[f"l1_{i}"] for i in range(sizes[0])]
    for t in range(1, len(sizes)):
        parents = list(range(len(paths)))
        owners = parents + [rng.randrange(len(paths)) for _ in range(sizes[t] - len(paths))]
        rng.shuffle(owners)
        paths = [paths[p] + [f"l{t + 1}_{i}"] for i, p in enumerate(owners)]
    rng.shuffle(paths)  # node order within each level = order of first appearance
    tax = Taxonomy.from_paths(paths)
    assert tax.level_sizes == list(sizes) and len(tax.leaves) == sizes[-1] and tax.is_fixed_depth
    return tax


def random_scores(tax: Taxonomy, n: int, seed: int, scale: float = 2.0) -> list[torch.Tensor]:
    """Per-level probabilities [n, size]: softmax of Gaussian logits, float32."""
    g = torch.Generator().manual_seed(seed)
    return [torch.softmax(scale * torch.randn(n, size, generator=g), dim=1) for size in tax.level_sizes]


def children_table(tax: Taxonomy) -> list[list[list[int]]]:
    """children[t][i]: indices in levels[t + 1] of the children of node i of levels[t]."""
    table = [[[] for _ in level] for level in tax.levels]
    for t in range(1, tax.num_levels):
        for c, p in enumerate(tax.parent_index(t).tolist()):
            table[t - 1][p].append(c)
    return table


def reference_one(rows: list[list[float]], children: list[list[list[int]]], k: int
                  ) -> list[tuple[float, tuple[int, ...]]]:
    """Per-sample beam search in plain Python: [(probability, path of per-level indices)], best first."""
    beams = heapq.nlargest(k, ((p, (i,)) for i, p in enumerate(rows[0])), key=lambda x: x[0])
    for t in range(1, len(rows)):
        level, kids = rows[t], children[t - 1]
        candidates = []
        for score, path in beams:
            if kids[path[-1]]:
                candidates.extend((score * level[c], path + (c,)) for c in kids[path[-1]])
            else:  # a leaf above the last level: the finished path competes unchanged
                candidates.append((score, path))
        beams = heapq.nlargest(k, candidates, key=lambda x: x[0])
    return beams


def reference(level_scores: list[torch.Tensor], k: int, children: list[list[list[int]]]
              ) -> list[list[tuple[float, tuple[int, ...]]]]:
    """The Python-float reference, one sample at a time (its tensors converted with tolist)."""
    n = level_scores[0].shape[0]
    return [reference_one([s[b].tolist() for s in level_scores], children, k) for b in range(n)]


def reference_torch(level_scores: list[torch.Tensor], k: int, children: list[list[torch.Tensor]]
                    ) -> list[list[tuple[float, tuple[int, ...]]]]:
    """The same algorithm with torch ops on one sample at a time (children as index tensors)."""
    out = []
    for b in range(level_scores[0].shape[0]):
        probs = [s[b] for s in level_scores]
        top = probs[0].topk(min(k, probs[0].numel()))
        scores, paths = top.values, [(i,) for i in top.indices.tolist()]
        for t in range(1, len(probs)):
            parts, cand_paths = [], []
            for score, path in zip(scores, paths):
                kids = children[t - 1][path[-1]]
                if kids.numel():
                    parts.append(score * probs[t][kids])
                    cand_paths.extend(path + (c,) for c in kids.tolist())
                else:  # a leaf above the last level: the finished path competes unchanged
                    parts.append(score.reshape(1))
                    cand_paths.append(path)
            cand = torch.cat(parts)
            top = cand.topk(min(k, cand.numel()))
            scores, paths = top.values, [cand_paths[i] for i in top.indices.tolist()]
        out.append(list(zip(scores.tolist(), paths)))
    return out


def best_time(fn, repeats: int) -> float:
    """Seconds of the fastest of ``repeats`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def check_same(level_scores: list[torch.Tensor], indices: torch.Tensor, probs: torch.Tensor,
               ref: list, rel_tol: float = 1e-4) -> int:
    """Compare the batched top-k paths and probabilities with the reference's, rank by rank.

    The probabilities must agree within rel_tol. A path may differ from the reference's only
    where that is a float32 near-tie: the batched path's own probability (the product of its
    nodes' probabilities) must then be within rel_tol of the reference's at that rank, and no
    path may repeat. Returns how many samples match the reference exactly.
    """
    exact = 0
    batched, batched_probs = indices.tolist(), probs.tolist()
    for b, beams in enumerate(ref):
        got = [[i for i in row if i != IGNORE_INDEX] for row in batched[b]]
        if len(beams) != len(got) or any(not g for g in got) or len(set(map(tuple, got))) != len(got):
            raise AssertionError(f"sample {b}: batched paths {got}, reference {beams}")
        same = True
        for j, (g, (s_ref, r)) in enumerate(zip(got, beams)):
            s_got = batched_probs[b][j]
            if g != list(r):
                same = False
                s_got = math.prod(level_scores[t][b, c].item() for t, c in enumerate(g))
            if abs(s_ref - s_got) > rel_tol * max(s_ref, s_got):
                raise AssertionError(f"sample {b}, rank {j}: batched path {g} (p={s_got:.6g}), "
                                     f"reference path {list(r)} (p={s_ref:.6g})")
        exact += same
    return exact


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, runs in a few seconds")
    parser.add_argument("--samples", type=int, help="samples for the batched search")
    parser.add_argument("--ref-samples", type=int, help="samples for the Python-float reference "
                        "(the torch-op reference gets a fifth of them)")
    parser.add_argument("--beam-width", type=int, default=5)
    parser.add_argument("--repeats", type=int, help="timed repeats (best is reported)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    n = args.samples or (20_000 if args.quick else 200_000)
    n_ref = args.ref_samples or (500 if args.quick else 5_000)
    n_ref_torch = max(1, n_ref // 5)
    repeats = args.repeats or (3 if args.quick else 7)
    k = args.beam_width

    tax = random_tree(args.seed)
    children = children_table(tax)
    children_t = [[torch.tensor(c, dtype=torch.long) for c in level] for level in children]
    level_scores = random_scores(tax, max(n, n_ref), args.seed + 1)
    batch_scores = [s[:n] for s in level_scores]
    ref_scores = [s[:n_ref] for s in level_scores]
    ref_torch_scores = [s[:n_ref_torch] for s in level_scores]
    widths = [max(map(len, level)) for level in children[:-1]]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"tree: levels {tax.level_sizes}, {len(tax.leaves)} leaves (all at depth {tax.num_levels}), "
          f"max children per level {widths}; k={k}; float32")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {os.cpu_count()} CPUs, "
          f"1-min load average before timing {load:.2f}")

    t_batched = best_time(lambda: beam_search_indices(batch_scores, tax, k), repeats)
    t_ref = best_time(lambda: reference(ref_scores, k, children), max(1, repeats // 3))
    t_ref_torch = best_time(lambda: reference_torch(ref_torch_scores, k, children_t), 1)

    indices, probs = beam_search_indices(ref_scores, tax, k)
    exact = check_same(ref_scores, indices, probs, reference(ref_scores, k, children))
    exact_torch = check_same(ref_torch_scores, indices[:n_ref_torch], probs[:n_ref_torch],
                             reference_torch(ref_torch_scores, k, children_t))
    print(f"check: top-{k} paths agree with the Python-float reference on {n_ref} samples ({exact} "
          f"identical, the rest differ only at float32 near-ties) and with the torch-op reference on "
          f"{n_ref_torch} samples ({exact_torch} identical)")

    rate = n / t_batched
    rows = [("batched beam_search_indices", n, t_batched),
            ("reference, Python floats", n_ref, t_ref),
            ("reference, torch ops", n_ref_torch, t_ref_torch)]
    print(f"{'':<28} {'samples':>9} {'best s':>9} {'samples/s':>12}")
    for name, count, seconds in rows:
        print(f"{name:<28} {count:>9} {seconds:>9.4f} {count / seconds:>12.4g}")
    print(f"ratio (batched / reference, Python floats): {rate / (n_ref / t_ref):.1f}x")
    print(f"ratio (batched / reference, torch ops): {rate / (n_ref_torch / t_ref_torch):.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
