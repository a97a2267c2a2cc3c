"""Step a trained column from Python, one observation and action at a time (colsim.load_column).

    colsim run stationary --steps 300 --out runs/stationary      # any finished single-column run
    python examples/load_column.py runs/stationary [--episodes 5]

The column is loaded from the run's config.yaml and final checkpoint; its class read-out is fitted on
the run's last stored probe embeddings (colsim/loaded.py says exactly which). Here the run's own world
stands in for another simulator's sensor: it draws held-out episodes (observation, action) that are
fed to ``step`` one view at a time. The script prints, per view, the top class hypothesis, and at the
end how often the last view's top hypothesis is the episode's class.
"""
from __future__ import annotations

import argparse

import numpy as np
import torch

import colsim
from colsim.build import build_world


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", help="a finished colsim run folder")
    ap.add_argument("--episodes", type=int, default=5)
    ap.add_argument("--views", type=int, default=4, help="views per episode")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    col = colsim.load_column(args.run_dir)
    print(col)
    print(f"read-out: fitted on {col.probe_eval['samples']} probe episodes at step {col.probe_eval['step']} "
          f"(held-out accuracy in the run: {col.probe_accuracy:.3f})")
    world = build_world(col.config)  # the sensor of this example: held-out episodes of the run's world
    eps = world.probe_set(None, args.episodes, args.views, torch.Generator().manual_seed(args.seed), {})
    right = 0
    for n in range(args.episodes):
        col.reset()  # a new object
        label = int(eps.labels["class"][n])
        for v in range(args.views):
            obs, action = eps.obs[n, v].numpy(), eps.actions[n, v].numpy()  # (C, H, W), (A,) to the next view
            r = col.step(obs, action)
            top = int(np.argmax(r.hypotheses))
            print(f"episode {n} (class {label}) view {v}: top hypothesis {col.classes[top]} "
                  f"p={r.hypotheses[top]:.2f}  |z|={np.linalg.norm(r.z):.2f}  "
                  f"|prediction|={np.linalg.norm(r.prediction):.2f}")
        right += int(col.classes[top] == label)
    print(f"last-view top hypothesis right in {right} of {args.episodes} episodes")


if __name__ == "__main__":
    main()
