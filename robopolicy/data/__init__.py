"""Demonstration datasets, stored in robomimic's HDF5 layout so robomimic and we read each other's
files."""

from robopolicy.data.hdf5 import (
    ROBOPOLICY_ENV_TYPE,
    DatasetError,
    DatasetNotFoundError,
    DatasetWriter,
    Episode,
    dataset_info,
    iter_episodes,
    list_demos,
    load_episodes,
    make_env_args,
    read_env_args,
    write_dataset,
)

__all__ = [
    "ROBOPOLICY_ENV_TYPE",
    "DatasetError",
    "DatasetNotFoundError",
    "DatasetWriter",
    "Episode",
    "dataset_info",
    "iter_episodes",
    "list_demos",
    "load_episodes",
    "make_env_args",
    "read_env_args",
    "write_dataset",
]
