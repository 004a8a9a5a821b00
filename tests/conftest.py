"""Tests mirror the package (tests/<layer>/test_*.py). The shared helpers in this folder
(`strategies`, `kernel_helpers`) are importable from every subfolder."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
