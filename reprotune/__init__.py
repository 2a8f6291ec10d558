"""reprotune: the shared library behind the pipeline stages in `stages/`."""
