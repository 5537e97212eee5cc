"""Coverage-guided fuzz harnesses (atheris) and their seed corpora (README: Fuzzing)."""
