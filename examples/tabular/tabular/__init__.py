"""An outside package for rst-tune: a dataset function and a model function, named by import path."""
