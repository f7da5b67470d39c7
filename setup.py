"""The one thing pyproject.toml cannot say to every setuptools the package is built with
(Debian 12 has 66): the C parts, the log collector's block scanner and the spool reader's batch
reads. Both are optional: without a compiler the install still succeeds and the pure-Python
twins (collectors/scanner.py, collectors/spoolread.py) do the work."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mailpulse.collectors._fastlog",
            sources=["collectors/_fastlog.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
        # The spool reader's batches of small reads, without the GIL (twin: spoolread.py).
        Extension(
            "mailpulse.collectors._fastqueue",
            sources=["collectors/_fastqueue.c"],
            extra_compile_args=["-O2"],
            optional=True,
        ),
    ]
)
