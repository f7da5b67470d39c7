"""The one thing pyproject.toml cannot say to every setuptools the package is built with
(Debian 12 has 66): the log collector's block scanner in C. It is optional: without a compiler
the install still succeeds and the pure-Python twin (collectors/scanner.py) does the work."""

from setuptools import Extension, setup

setup(
    ext_modules=[
        Extension(
            "mailpulse.collectors._fastlog",
            sources=["collectors/_fastlog.c"],
            extra_compile_args=["-O2"],
            optional=True,
        )
    ]
)
