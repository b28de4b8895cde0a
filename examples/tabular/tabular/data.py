"""A six-class tabular problem, generated offline by scikit-learn, in the three parts rst-tune wants."""

from sklearn.datasets import make_classification


def six_classes(samples: int = 6000, features: int = 40, noise: float = 0.05, seed: int = 0) -> dict:
    """`samples` rows of `features` standardised columns: 60 % train, 20 % validation, 20 % test.
    `noise` is the fraction of labels scikit-learn assigns at random."""
    x, y = make_classification(
        n_samples=samples,
        n_features=features,
        n_informative=12,
        n_classes=6,
        n_clusters_per_class=2,
        flip_y=noise,
        random_state=seed,
    )
    x = x.astype("float32")
    train, val = int(0.6 * samples), int(0.8 * samples)
    mean, std = x[:train].mean(0), x[:train].std(0)
    x = (x - mean) / std
    return {"train": (x[:train], y[:train]), "val": (x[train:val], y[train:val]), "test": (x[val:], y[val:])}
