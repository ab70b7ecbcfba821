"""CNN-S2S options beyond the paper (issue 15), both off by default: ``level_inputs`` feeds u_t to decoder
step t; ``residual`` adds CNN-RNN's residual arc, step t's logits from u_t + z(h_t)."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
import yaml

from dhnn.evaluation.prefixes import prefix_probs
from dhnn.models.s2s import CNNS2S
from dhnn.params import ParamsError, validate
from dhnn.params_models import S2SParams

sys.path.insert(0, str(Path(__file__).parent))
from test_s2s import TREE, images, make, sharpen  # noqa: E402
from test_s2s_multilabel import LABELS, node_sets  # noqa: E402
from test_s2s_multilabel import TREE as SET_TREE  # noqa: E402
from test_s2s_multilabel import make as make_multilabel  # noqa: E402

FEEDS = ["teacher", "softmax"]
OPTIONS = [{"level_inputs": True}, {"residual": True}, {"level_inputs": True, "residual": True}]
CASES = [(feed, opts) for feed in FEEDS for opts in OPTIONS]
IDS = [f"{feed}-{'+'.join(opts)}" for feed, opts in CASES]


def test_level_inputs_are_off_by_default_and_schema_checked() -> None:
    # the paper's decoder: the image only through the initial state, logits from h_t alone
    assert S2SParams().level_inputs is False and S2SParams().residual is False
    plain, fed, arc = make(), make(level_inputs=True), make(residual=True)
    p = plain.inputs.out_features
    assert plain.decoder.input_size == p and fed.decoder.input_size == 2 * p  # embed_size defaults to p
    assert plain.z is None and arc.z.out_features == p and arc.out.in_features == p
    raw = yaml.safe_load(Path("configs/fashion-scenes.yaml").read_text())
    raw["variants"]["S2S-Pool"]["s2s"]["level_inputs"] = True
    assert validate(raw, "scenes").variants["S2S-Pool"].s2s.level_inputs is True
    raw["variants"]["S2S-Pool"]["s2s"]["level_inputs"] = "yes please"
    with pytest.raises(ParamsError, match="level_inputs"):
        validate(raw, "scenes")


def run_steps(model: CNNS2S, state: tuple, inputs: torch.Tensor, feeds: list[torch.Tensor]) -> torch.Tensor:
    """Logits [N, T+1, |V|+1] from the decoder run one step at a time on the given feeds (start first)."""
    out, s = [], state
    for t, x in enumerate(feeds):
        logits, s = model.step(x, s, inputs, t)
        out.append(logits)
    return torch.stack(out, 1)


@pytest.mark.parametrize("feed,opts", CASES, ids=IDS)
def test_level_input_t_reaches_step_t_and_no_earlier(feed: str, opts: dict) -> None:
    model = make_multilabel(feed=feed, **opts)
    sets = node_sets(LABELS)
    out = model(images(len(LABELS)), sets)  # teacher-forced with feed="teacher", free-running with "softmax"
    assert out.inputs.shape == (len(LABELS), SET_TREE.num_levels, model.inputs.out_features)
    targets = model.set_targets(sets)
    start = model.start.expand(len(LABELS), -1)
    if feed == "teacher":
        feeds = [start] + [model._embed_sets(targets[:, t]) for t in range(SET_TREE.num_levels)]
    else:
        feeds = [start] + [model.set_input(out.logits[:, t], t) for t in range(SET_TREE.num_levels)]
    with torch.no_grad():
        assert torch.allclose(run_steps(model, out.state, out.inputs, feeds), out.logits, atol=1e-5)
        changed = out.inputs.clone()
        changed[:, 1] += 1.0  # u_2 only: steps 0 (level 1) and before stay, step 1 (level 2) moves
        moved = run_steps(model, out.state, changed, feeds)
    assert torch.allclose(moved[:, 0], out.logits[:, 0], atol=1e-6)
    assert not torch.allclose(moved[:, 1], out.logits[:, 1], atol=1e-3)


@pytest.mark.parametrize("feed,opts", CASES, ids=IDS)
def test_beam_search_and_prefixes_use_the_level_inputs(feed: str, opts: dict) -> None:
    """Single-label paths: beam scores and prefix probabilities are the step-by-step ones, u_t given to step t."""
    model = make(feed=feed, end_after="any", **opts)
    sharpen(model, 1)
    with torch.no_grad():
        model.inputs.convert["layer2"].register_forward_hook(lambda m, a, y: y * 4)  # u_t that matter
        out = model(images(3, seed=1))
        indices, scores = model.decode_beams(out, beam_width=3)
        prefixes = prefix_probs(model, out, indices)
        for b in range(3):
            state = tuple(s[:, b:b + 1].contiguous() for s in out.state)
            for k, names in enumerate(TREE.decode(indices[b])):
                tokens = [TREE.nodes.index(n) for n in names] + [model.end]
                x, s, probs = model.start[None], state, []
                for t, token in enumerate(tokens):
                    logits, s = model.step(x, s, out.inputs[b:b + 1], t)
                    probs.append(logits.softmax(-1)[0, token])
                    x = model.embed(torch.tensor([token])) if feed == "teacher" else model.feed_proj(logits.softmax(-1))
                want = torch.stack(probs).cumprod(0)
                assert scores[b, k].item() == pytest.approx(want[-1].item(), rel=1e-4)
                assert torch.allclose(prefixes[b, k, :len(names)], want[:-1], rtol=1e-4)
