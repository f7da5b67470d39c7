"""The C scanner under AddressSanitizer and UndefinedBehaviorSanitizer: the same source built
with gcc -fsanitize=address,undefined, run over the differential fuzz corpus in a child
Python with the ASan runtime preloaded. Any sanitizer report fails the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SOURCE = REPO / "collectors" / "_fastlog.c"
FLAGS = ["-fsanitize=address,undefined", "-fno-omit-frame-pointer", "-fno-sanitize-recover=all"]
REPORTS = ("ERROR: AddressSanitizer", "runtime error:", "SUMMARY: UndefinedBehaviorSanitizer")

# A module with one heap overflow: proof that a report from the build below is seen.
OVERFLOW = r"""
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdlib.h>
#include <string.h>
static PyObject *scan(PyObject *self, PyObject *args) {
    char *p = calloc(8, 1), d[16];
    memcpy(d, p, 8 + PyTuple_GET_SIZE(args) / 2); /* 9 bytes: scan gets 3 arguments */
    free(p);
    return PyLong_FromLong(d[0]);
}
static PyMethodDef methods[] = {{"scan", scan, METH_VARARGS, NULL}, {NULL, NULL, 0, NULL}};
static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_fastlog", NULL, -1, methods};
PyMODINIT_FUNC PyInit__fastlog(void) { return PyModule_Create(&module); }
"""


def runtime() -> str:
    """The ASan runtime gcc links against, or a skip saying what is missing."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("not installed: gcc (make deps installs it)")
    lib = subprocess.run(
        [gcc, "-print-file-name=libasan.so"], capture_output=True, text=True, check=True
    ).stdout.strip()
    if not os.path.isabs(lib) or not os.path.exists(lib):
        pytest.skip("gcc has no libasan (make deps installs libasan8 and libubsan1)")
    if not (Path(sysconfig.get_paths()["include"]) / "Python.h").exists():
        pytest.skip("Python's headers are missing (make deps installs python3-dev)")
    return lib


def build(source: Path, out_dir: Path) -> Path:
    """source -> a sanitized extension module in out_dir, with this Python's headers."""
    out = out_dir / ("_fastlog" + str(sysconfig.get_config_var("EXT_SUFFIX")))
    cmd = ["gcc", "-shared", "-fPIC", "-O1", "-g", *FLAGS]
    cmd += ["-I", sysconfig.get_paths()["include"], str(source), "-o", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    assert r.returncode == 0, r.stderr
    return out


def run_sanitized(module: Path, lib: str, lines: int) -> subprocess.CompletedProcess[str]:
    env = dict(
        os.environ,
        LD_PRELOAD=lib,
        ASAN_OPTIONS="detect_leaks=0",
        UBSAN_OPTIONS="halt_on_error=1:print_stacktrace=1",
        PYTHONMALLOC="malloc",  # objects from malloc itself, so ASan sees their bounds too
    )
    return subprocess.run(
        [sys.executable, "-m", "tests.test_scanner_fuzz", str(module), str(lines)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,  # only a hang comes near it
        check=False,
    )


def test_the_sanitized_build_reports_a_heap_overflow(tmp_path: Path) -> None:
    # Bad input: a module that reads one byte past its buffer. The harness must see it,
    # else a clean run of the scanner below would prove nothing.
    lib = runtime()
    (tmp_path / "overflow.c").write_text(OVERFLOW)
    r = run_sanitized(build(tmp_path / "overflow.c", tmp_path), lib, 10)
    assert r.returncode != 0 and "heap-buffer-overflow" in r.stderr, r.stderr[-2000:]


def test_scanner_runs_the_fuzz_corpus_clean_under_asan_and_ubsan(tmp_path: Path) -> None:
    # Bad input: the differential fuzz corpus (cut lines, NULs, non-ASCII, 70 KB fields,
    # values that collide across fields), through the scanner built with the sanitizers.
    lib = runtime()
    r = run_sanitized(build(SOURCE, tmp_path), lib, 24000)
    reports = [line for line in r.stderr.splitlines() if any(m in line for m in REPORTS)]
    assert not reports and r.returncode == 0, r.stdout[-2000:] + r.stderr[-4000:]
    assert "24000 lines, no difference" in r.stdout
