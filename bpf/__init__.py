"""The kernel side: real C sources, shipped as package data."""

from pathlib import Path

BPF_DIR = Path(__file__).resolve().parent
