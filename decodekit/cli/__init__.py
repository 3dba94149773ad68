"""The ``decodekit`` command line (click): ``strategies``, ``generate`` and ``compare``.

One concept per module: ``main`` (the group, error handling, entry point), one module per command,
``specs`` (strategy options on the command line), ``prompts`` (prompt files), ``model`` (model
options and loading), ``runs`` / ``columns`` / ``report`` (compare's runs, metric columns, outputs).
"""
