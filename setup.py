"""setup.py shim: only here so setuptools builds the cffi extensions (cffi_modules)."""
import os

from setuptools import setup

here = os.path.dirname(os.path.abspath(__file__))
modules = [
    f"cffi_build/{name}:ffibuilder"
    for name in ("build_vfu.py", "build_virtq.py", "build_fast.py")
    if os.path.exists(os.path.join(here, "cffi_build", name))
]

setup(cffi_modules=modules)
