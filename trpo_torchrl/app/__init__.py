"""The training application (``trpo-torchrl``): configs, presets, envs, the loop, checkpoints,
evaluation and plots. It uses the library as a user would; nothing in the library imports it."""
