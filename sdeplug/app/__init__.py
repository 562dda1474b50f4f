"""The application: TOML configs, the ``sdeplug`` command and what they assemble (data sets,
networks, guided runs, plots, reports).

Dependencies run one way: this package uses the library (``sdeplug.sampling``,
``sdeplug.trainer``, ...) and the plugin API; neither of those imports it.
"""
