import json
import os

import pytest

from helpers import ROOT

# notebook -> a line its run must print (evidence it ran to the end, not only that it did not fail)
EXPECTED = {
    "quickstart.ipynb": "loss after 30 steps",
    "prototype_objective.ipynb": "on gold_reward: ",
    # trains 3 reward models, samples ~10k completions, runs 4 short GRPO runs: minutes on a CPU
    "reward_hacking.ipynb": "best-of-n, proxy N=4096: gold peaks at n =",
}
SLOW = {"reward_hacking.ipynb"}


def test_every_notebook_is_checked():
  assert sorted(f for f in os.listdir(os.path.join(ROOT, "notebooks")) if f.endswith(".ipynb")) == sorted(EXPECTED)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n
                                  for n in sorted(EXPECTED)])
def test_notebook_runs_top_to_bottom(name, capsys):
  """Executes every code cell in order, so the notebooks cannot silently rot."""
  with open(os.path.join(ROOT, "notebooks", name)) as f:
    nb = json.load(f)
  scope = {"__name__": "__notebook__"}
  for i, cell in enumerate(nb["cells"]):
    if cell["cell_type"] == "code":
      exec(compile("".join(cell["source"]), f"{name}[cell {i}]", "exec"), scope)
  assert EXPECTED[name] in capsys.readouterr().out
