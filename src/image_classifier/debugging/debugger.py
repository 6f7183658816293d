"""What debugging adds to a training job: the hook, the rules after every epoch, their results at the end."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from image_classifier.debugging import report
from image_classifier.debugging.hook import DEBUG_OUTPUT_DIR, DebugHook
from image_classifier.debugging.results import ISSUES, RuleResult, format_table, write_results
from image_classifier.sagemaker_env import SageMakerEnv

if TYPE_CHECKING:  # the rules import smdebug: only once the hook has saved tensors
    from image_classifier.debugging.rules import RuleSet

logger = logging.getLogger(__name__)


class Debugger:
    """The smdebug hook of the job and the project's rules evaluated on what it saves."""

    def __init__(self, hook: DebugHook, env: SageMakerEnv, stop_on: tuple[str, ...] = ()):
        self.hook, self.stop_on = hook, stop_on
        self.directory = env.output_data_dir / DEBUG_OUTPUT_DIR
        self._rules: RuleSet | None = None
        self._reported: set[str] = set()

    @classmethod
    def create(cls, env: SageMakerEnv, debug: bool, stop_on: tuple[str, ...] = ()) -> Debugger | None:
        """The job's debugger, or None when neither `debug` nor SageMaker's hook file asks for one.

        Raises:
            hook.DebugUnavailable: asked for, and smdebug cannot provide it.
        """
        hook = DebugHook.create(env, debug)
        return cls(hook, env, stop_on) if hook else None

    def _rule_set(self) -> RuleSet | None:
        if self._rules is None and self.hook.out_dir.is_dir():
            from smdebug.trials import create_trial

            from image_classifier.debugging.rules import RULE_NAMES, RuleSet

            self._rules = RuleSet(create_trial(str(self.hook.out_dir)), RULE_NAMES)
        return self._rules

    def evaluate(self) -> list[RuleResult]:
        """Run the rules on the steps saved so far and write their results; returns them."""
        self.hook.flush()
        rules = self._rule_set()
        if rules is None:
            return []
        results = list(rules.evaluate().values())
        write_results(self.directory, results)
        return results

    def end_epoch(self, epoch: int) -> list[str]:
        """Evaluate the rules after an epoch; the `stop_on` rules that fired (then training stops)."""
        results = self.evaluate()
        fired = [r.rule for r in results if r.status == ISSUES]
        new = [r for r in results if r.status == ISSUES and r.rule not in self._reported]
        for result in new:
            logger.warning("rule %s fired at step %s: %s", result.rule, result.step, result.details[0])
        self._reported.update(r.rule for r in new)
        return [name for name in fired if name in self.stop_on]

    def close(self, evaluate: bool = True, epochs: list[dict] | None = None) -> list[RuleResult]:
        """Final evaluation and the rules table in the log; the hook closed (its tensors copied
        under output/data/debug); then the debugger report, with `epochs` (the job's per-epoch
        figures, `training.metrics.read_epochs`) as its learning curves. With `evaluate` false (a
        job stopped by SIGTERM) only the hook is closed."""
        results: list[RuleResult] = []
        try:
            if evaluate:
                results = self.evaluate()
            if results:
                logger.info("debugger rules:\n%s", format_table(results))
        finally:
            self.hook.close()
        if self._rules is not None and evaluate:
            try:
                path = report.write(self.directory, self._rules.trial, results, epochs or [])
                logger.info("debugger report: %s", path)
            except Exception:  # the report is a view of the job's results, not a reason to fail it
                logger.exception("the debugger report could not be written")
        return results

