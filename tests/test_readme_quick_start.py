"""The README's quick start runs as written and learns: it is a PML script with one import
changed, and it must never rot."""
import os
import re

import pytest

README = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "README.md")


def _quick_start() -> str:
    text = open(README, encoding="utf-8").read()
    section = text[text.index("## Quick start"):text.index("## API")]
    (code,) = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    return code


@pytest.mark.slow
def test_quick_start_runs_and_beats_the_untrained_model(capsys):
    code = _quick_start()
    assert "from pml_grouploss import losses, miners, samplers, testers, trainers" in code
    assert "pytorch_metric_learning import" not in code.replace(
        "pytorch_metric_learning.utils.accuracy_calculator import", "")
    exec(compile(code, README, "exec"), {"__name__": "__quick_start__"})
    precision = float(capsys.readouterr().out.strip().splitlines()[-1])
    # raw pixels give P@1 ~0.39 on these test characters; an untrained trunk ~0.3
    assert precision > 0.45, precision
