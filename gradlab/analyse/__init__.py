"""Analysis of run records: verdicts with remedies, `expect:` claims, and signal-propagation
theory. Reads summaries and resolved configs only; no torch.
"""
