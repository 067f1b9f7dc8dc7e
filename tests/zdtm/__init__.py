"""CRIU's zdtm static tests, run through raw CRIU and through cedana side by side.

zdtm is CRIU's own test suite: each static test sets up some kernel state (pipes,
ptys, sockets, timers, locks, namespaces...), waits to be checkpointed and
restored, and then checks that the state survived, writing PASS or FAIL. Running
them through ``cedana.Process(pid).checkpoint(...)`` and ``cedana.restore(...)``
beside plain ``criu dump``/``criu restore`` shows what cedana's process layer adds
or loses on top of CRIU.

The harness lives with the tests (not in ``benchmarks/``, which measures speed) and
is run as ``python -m tests.zdtm`` (``nox -s zdtm``); ``tests/integration/test_zdtm.py``
runs a short subset of it in the normal test suite. Modules:

    suite.py     the source tree, the tests and their .desc, CRIU options in cedana's terms
    run.py       one test in one mode, as zdtm.py runs it, isolated in zdtm_ct's namespaces
    __main__.py  the command line: build, run every test both ways, table, results file
"""
