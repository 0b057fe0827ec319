"""Training cross-encoder rerankers: data (BEIR + mined negatives, answer-selection TSVs), losses (listwise,
pairwise, BCE), the loop (AdamW, warm-up + linear decay, accumulation, clipping, dev selection, exact resume) and
export (HF checkpoint + model card; optional bundle packing). Inference code never imports this package.

    from crossrank.train import SourceSpec, TrainConfig, train
    train(TrainConfig(sources=[SourceSpec("../shared/data/scifact")], output_dir="runs/x"))
"""

from crossrank.train.config import SourceSpec, TrainConfig


def train(config: TrainConfig, stop=None):
    """See ``crossrank.train.trainer.train`` (imported lazily: torch/transformers load on first use)."""
    from crossrank.train.trainer import train as _train

    return _train(config, stop)


__all__ = ["SourceSpec", "TrainConfig", "train"]
