"""Helpers for the frameworks users train with (Hugging Face ``transformers``, Lightning).

Each module imports its framework only when one of its helpers is called, so nandoctor's
core and ``nandoctor --help`` never need them installed.
"""
