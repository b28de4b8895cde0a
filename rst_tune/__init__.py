"""rst-tune: find the cheapest way to train a network with sharpness-aware minimization.

The engine, for your own training loop or a run of ours:

    from rst_tune import RandomizedSAM, make_schedule

    base = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    optimizer = RandomizedSAM(base, make_schedule("linear_mean", p=0.5), total_steps=1000, model=model)

    from rst_tune import load_config, train
    history = train(load_config({"dataset": "digits", "epochs": 5}))

Searches and studies from Python: `rst_tune.api`; their parts: `rst_tune.search`, `rst_tune.study`,
`rst_tune.tracking`; the methods table: `rst_tune.methods`.
"""

from rst_tune._train import EpochMetrics, Trainer, train
from rst_tune.config import ConfigError, TrainConfig, load_config
from rst_tune.methods import METHODS
from rst_tune.schedules import SCHEDULES, Schedule, make_schedule
from rst_tune.sharpness import RandomizedSAM

__version__ = "0.1.0"

__all__ = [
    "METHODS",
    "SCHEDULES",
    "ConfigError",
    "EpochMetrics",
    "RandomizedSAM",
    "Schedule",
    "TrainConfig",
    "Trainer",
    "load_config",
    "make_schedule",
    "train",
]
