"""A small project with its own image classifier, to gate with `--model tiny_project.models:small_cnn`."""
