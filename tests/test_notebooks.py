import json
import os

import pytest

from helpers import ROOT

# what each notebook must print when it runs to the end
EXPECTED = {"quickstart.ipynb": "loss after 30 steps",
            "prototype_objective.ipynb": "on gold_reward: "}


@pytest.mark.parametrize("name", sorted(f for f in os.listdir(os.path.join(ROOT, "notebooks"))
                                        if f.endswith(".ipynb")))
def test_notebook_runs_top_to_bottom(name, capsys):
  """Executes every code cell in order, so the notebooks cannot silently rot."""
  with open(os.path.join(ROOT, "notebooks", name)) as f:
    nb = json.load(f)
  scope = {"__name__": "__notebook__"}
  for i, cell in enumerate(nb["cells"]):
    if cell["cell_type"] == "code":
      exec(compile("".join(cell["source"]), f"{name}[cell {i}]", "exec"), scope)
  assert EXPECTED[name] in capsys.readouterr().out
