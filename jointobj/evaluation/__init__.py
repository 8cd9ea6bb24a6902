"""Evaluation: the sweep over toy sets and decoders, the frontier and its Target, metrics, reports and plots,
probes, generation and the lm-evaluation-harness glue, benchmark helpers."""
