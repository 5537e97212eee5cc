"""Where tenant documents live: a directory of YAML files, or Redis."""
