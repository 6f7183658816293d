"""The rule names and results are readable without smdebug; the rule classes need it."""

import subprocess
import sys

import pytest

from image_classifier.debugging.rule_names import RULE_DEFAULTS, RULE_NAMES

WITHOUT_SMDEBUG = """
import sys
sys.modules["smdebug"] = None  # as on a machine with only the launch or serve extra
import image_classifier.debugging.debugger, image_classifier.profiling.profiler, image_classifier.reports
from image_classifier.training.config import TrainConfig
print(",".join(TrainConfig.from_hyperparameters({"debug-stop-on": "overfit,deadrelu"}).stop_on_rules))
try:
    import image_classifier.debugging.rules
except ImportError as exc:
    print("rules:", type(exc).__name__)
"""


def test_names_and_results_without_smdebug_and_the_rules_only_with_it():
    result = subprocess.run([sys.executable, "-c", WITHOUT_SMDEBUG], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.splitlines()[-2:] == ["Overfit,DeadRelu", "rules: ModuleNotFoundError"]


def test_rule_names_are_the_defaults_keys_and_the_defaults_are_read_only():
    assert tuple(RULE_DEFAULTS) == RULE_NAMES and len(RULE_NAMES) == 10
    with pytest.raises(TypeError):
        RULE_DEFAULTS["Overfit"]["patience"] = 2
    assert RULE_DEFAULTS["Overfit"]["patience"] == 1
