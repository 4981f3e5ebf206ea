"""Puts the repository's python/ on sys.path so `import lca` finds the package without installing it."""

import pathlib
import sys

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[2] / "python"))
