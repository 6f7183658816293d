"""Profiling without SageMaker Debugger: a system monitor, step timing, torch.profiler, the ProfilerReport rules."""
