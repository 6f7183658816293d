"""Rules' verdicts, debugger's and profiler's alike: `RuleResult`, its statuses, the table and the files.

Light on purpose (no smdebug): the profiler, the reports and the training job read and write
results without the debugger's rule classes.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

NO_ISSUES, ISSUES, ERROR, NOT_APPLICABLE = "NoIssuesFound", "IssuesFound", "Error", "NotApplicable"
RULES_DIR = "rules"           # <Rule>.json in it, as AWS's rule containers write them
RULES_SUMMARY = "rules.json"  # every rule's RuleResult in one file


@dataclass
class RuleResult:
    """One rule's verdict so far.

    Attributes:
        rule: the rule's name, as AWS names it (e.g. "VanishingGradient").
        status: NoIssuesFound, IssuesFound, Error or NotApplicable (with the reason in details).
        step: the first global step it fired at, or None.
        details: what fired and why, per step (at most the first 20 violations are kept).
        parameters: the rule's parameters.
        violations: steps at which it fired.
        datapoints: steps it evaluated.
    """

    rule: str
    status: str
    step: int | None = None
    details: list[str] = field(default_factory=list)
    parameters: dict[str, Any] = field(default_factory=dict)
    violations: int = 0
    datapoints: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def aws_json(self) -> dict[str, Any]:
        """The rule's report in the shape AWS's rule containers write it."""
        return {"RuleTriggered": self.violations, "Violations": self.violations,
                "Details": {"status": self.status, "first_step": self.step, "messages": self.details},
                "Datapoints": self.datapoints,
                "RuleParameters": "\n".join(f"{k}:{v}" for k, v in self.parameters.items())}


def format_table(results: Iterable[RuleResult]) -> str:
    """The rules table of the log and the report: rule, status, first step, violations, detail."""
    rows = [f"{'rule':<26} {'status':<14} {'step':>6} {'violations':>10}  details"]
    for r in results:
        detail = re.sub(r"\s+", " ", r.details[0] if r.details else "")[:120]
        step = "" if r.step is None else r.step
        rows.append(f"{r.rule:<26} {r.status:<14} {step:>6} {r.violations:>10}  {detail}")
    return "\n".join(rows)


def write_results(directory: Path, results: Iterable[RuleResult]) -> None:
    """`directory/rules/<Rule>.json` (AWS's shape) and `directory/rules.json` (every RuleResult)."""
    from image_classifier import artifacts

    results = list(results)
    for result in results:
        artifacts.atomic_write_bytes(directory / RULES_DIR / f"{result.rule}.json",
                                     json.dumps(result.aws_json(), indent=2, default=str).encode())
    artifacts.atomic_write_bytes(directory / RULES_SUMMARY,
                                 json.dumps([r.to_dict() for r in results], indent=2, default=str).encode())


def read_results(directory: Path) -> list[RuleResult]:
    """The RuleResults `write_results` wrote in `directory`, or [] when there are none."""
    path = directory / RULES_SUMMARY
    return [RuleResult(**r) for r in json.loads(path.read_text())] if path.is_file() else []
