"""Measurements shared by the probes: the traced pass, the backward origin search, hooks."""
