"""The notebook's code runs, top to bottom, on a real analysis of a corpus recording."""

import json
import os
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_notebook_code_cells_run(tmp_path, monkeypatch, capsys):
    nb = json.loads((ROOT / "notebooks" / "retransmits.ipynb").read_text())
    monkeypatch.chdir(ROOT)
    monkeypatch.delenv("RETRANSCOPE_ANALYSIS", raising=False)
    env: dict = {}
    for cell in nb["cells"]:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), "notebook", "exec"), env)
    rt = env["rt"]
    assert len(rt) > 0 and set(rt["kind"]) <= {
        "tlp",
        "fast",
        "rto",
        "rto_recovery",
        "syn",
        "synack",
        "unknown",
    }
    assert (rt["kind"] == "tlp").any()
    assert os.path.exists(env["ANALYSIS"] / "summary.json")
