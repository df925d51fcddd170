"""Aggregation of run directories into tables and reports."""
