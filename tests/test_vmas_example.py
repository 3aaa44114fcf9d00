"""The multi-agent example runs a few iterations with per-agent trust regions (skipped without vmas)."""

import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("vmas") is None, reason="needs the vmas package")
@pytest.mark.slow
def test_vmas_navigation_example_runs_a_few_iterations():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    agents = 3
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "examples" / "vmas_navigation.py"),
            "--iterations",
            "2",
            "--num-envs",
            "8",
            "--steps",
            "20",
            "--agents",
            str(agents),
            "--hidden",
            "16",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [line for line in proc.stdout.splitlines() if line.startswith("iter")]
    assert len(lines) == 2
    for line in lines:
        # one acceptance flag and one KL per agent: each agent had its own trust region
        accepted = re.search(r"accepted ([yn]+)", line).group(1)
        kls = [float(k) for k in re.search(r"kl \[([^\]]*)\]", line).group(1).split()]
        assert len(accepted) == agents and len(kls) == agents
        assert all(k <= 0.01 + 1e-6 for k in kls)
        # an agent whose step was accepted moved the MultiAgentMLP's own parameters; a rejected one did not
        moved = [float(d) for d in re.search(r"moved \[([^\]]*)\]", line).group(1).split()]
        assert [d > 0 for d in moved] == [a == "y" for a in accepted]
    assert "frames     320" in lines[-1]
