"""The regression gate as a library: cases, thresholds, the baseline store, checks, and one process's runner.

    cases       what to run: GateCase, parsing of variants / batch sizes / devices, the size of the Holm family
    metrics     the metrics judged against a baseline, declared once with how each is judged
    thresholds  the reviewed thresholds file (thresholds.json beside it, shipped with the package)
    store       the per-environment baseline files, built from several fresh-process runs
    checks      accuracy against fp32, floors, and every metric against the baseline
    runner      Gate: one process's sessions, measuring, judging (Holm + confirmation), the run record
    summary     the end-of-run summary and the pytest-benchmark extra_info

harness/pytest_gate/ is the thin pytest plugin over this package (bench/ loads it); nothing here imports pytest.
"""
