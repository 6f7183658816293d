"""Debugging without the SageMaker Debugger service: the smdebug hook, the rules, the reports."""
