"""The TPC-CMA trainer: ``python -m cma.train`` (see :mod:`cma.train.run`)."""

from cma.train.config import TrainConfig, build_parser, parse_config
from cma.train.runner import main, run

__all__ = ["TrainConfig", "build_parser", "main", "parse_config", "run"]
