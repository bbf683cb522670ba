"""The chaos suite (issue 9): faults injected with real processes and signals, actions counted outside Redis."""
