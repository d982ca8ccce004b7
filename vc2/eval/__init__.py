"""VisPlotBench-style evaluation: tasks, prompts, sandboxed renderers (executors), reports."""
