"""``python -m crossrank.train``: train a cross-encoder reranker (see ``crossrank.train.TrainConfig``)."""

from __future__ import annotations

import sys

from crossrank.train.cli import main

if __name__ == "__main__":
    sys.exit(main())
