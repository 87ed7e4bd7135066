"""dermlow's shipped YAML configs. Installed as the package `dermlow._configs` (see pyproject.toml);
code finds them through `dermlow.resources.config_dir()`. This folder holds no code."""
