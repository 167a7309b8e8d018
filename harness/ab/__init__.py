"""Head against base in one job: `python -m harness ab BASE [HEAD]` and `python -m harness bisect GOOD BAD`.

Two worker processes (harness/ab/worker.py), one per side, each importing the model from its own checkout
(a temporary git worktree of the ref, or the working tree); the parent (harness/ab/runner.py) has them time their
cases in interleaved rounds and judges head against base (harness/ab/judge.py). The measuring code is the installed
harness on both sides: what differs is the project's code, the model.
"""
