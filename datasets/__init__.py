"""Demonstration data: zarr replay buffer, robomimic HDF5 import/export, sequence sampler, statistics.

Installed as ``lfm_policy.datasets``. Heavy dependencies (zarr, h5py) load inside the submodules.
"""
