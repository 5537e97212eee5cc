"""Coverage-guided fuzz harnesses (atheris); see tests/fuzz/README.md."""
