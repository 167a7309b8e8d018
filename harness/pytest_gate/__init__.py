"""The regression gate as a pytest suite that ships with the package, so a project needs nothing copied to run it.

    plugin      the pytest plugin: the gate's options (their defaults from [tool.resnet-gate]), fixtures, the
                parametrization and the reporter, over the library harness.gate
    test_gate   the one test, one case per variant x device x batch size
    command     `python -m harness gate [pytest args]`: pytest on the two, in the current project
    pytest.ini  the gate's own pytest settings (-c), the same in every project
"""
