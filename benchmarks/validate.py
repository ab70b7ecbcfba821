"""Train one variant of params.yaml with some settings changed, and print its validation path accuracy per epoch.

    python benchmarks/validate.py RNN-Pool-Resi '{"level_layers": [["layer4"], ["layer3"], ["layer2", "layer1"]]}' --seed 0
    python benchmarks/validate.py Flat '{"train": {"epochs": 3}}'

How the default recipe was chosen (docs/results.md, "How the recipe was chosen"): on the validation split,
never on test. The JSON object overrides keys of the variant's entry; its "train" key overrides
keys of the train section. Nothing is written outside a temporary folder.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from dhnn.params import validate  # noqa: E402
from dhnn.pipeline import layout, taxonomy_stage, train_stage  # noqa: E402


def main() -> None:
    """Train the changed variant once and print its validation path accuracy per epoch and its time."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("variant", help="a variant of the params file")
    parser.add_argument("overrides", nargs="?", default="{}", help="JSON: keys of the variant (and 'train') to change")
    parser.add_argument("--params", default=str(ROOT / "params.yaml"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    raw = yaml.safe_load(Path(args.params).read_text())
    overrides = json.loads(args.overrides)
    raw["train"].update(overrides.pop("train", {}))
    raw["variants"] = {args.variant: {**raw["variants"][args.variant], **overrides}}
    raw["grid"] = {"variants": [args.variant], "seeds": [args.seed]}
    raw["runtime"]["progress"] = False
    params = validate(raw, args.params)
    with tempfile.TemporaryDirectory(prefix="dhnn-validate-") as tmp:
        taxonomy_stage.save_taxonomy(taxonomy_stage.build_taxonomy(params), tmp)
        run = train_stage.prepare_training(params, args.variant, args.seed, layout.taxonomy_path(tmp))
        start = time.perf_counter()
        history = train_stage.train(run, params, Path(tmp) / "run")
    accuracy = ", ".join(f"{100 * a:.2f}" for a in history[f"val/{run.task.select}"])
    print(f"{args.variant} {json.dumps(json.loads(args.overrides))} seed {args.seed}: validation "
          f"{run.task.select} by epoch {accuracy}; {time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
