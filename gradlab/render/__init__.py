"""Rendering run records: terminal reports and tables (rich renderables, returned, never
printed here) and figures (PNG, Agg). Reads records and verdicts only; no torch.
"""
