"""Backdoor attacks, one module per attack: settings.py (their params sections, torch-free),
base.py (the interface), registry.py (the attacks by name)."""
