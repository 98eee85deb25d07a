"""Datasets -> numpy batches, in three rooms: `sources` (the raw examples of each dataset),
`transforms` (scaling, dequantisation, flips) and `iterator` (the resumable, shardable batches).

`from score_sde import data; data.X` reaches every name of the three.

Nothing is downloaded; the datasets and where they are read from are listed in `sources`.

Scaling of an integer level k in {0, ..., L-1} (L = ``num_levels``) to x in [0, 1]:
without dequantisation x = k / (L - 1); with uniform dequantisation x = (k + u) / L, u ~ U[0, 1),
so each level keeps its own bin [k / L, (k + 1) / L). Centered data is 2 x - 1.

The stream of examples of a split is the concatenation of per-epoch permutations; the
permutation of epoch e is a pure function of (config.seed, split, e), and every random
augmentation of an example is a pure function of (config.seed, split, e, example id). What a
stream position holds therefore does not depend on the batch size or the number of processes,
and a run resumed from ``get_state`` continues bit for bit.
"""

from score_sde.data import iterator, sources, transforms
from score_sde.data.transforms import (  # noqa: F401
    data_range,
    scale,
    dequantize,
    _affine,
    inverse_scale,
    bits_per_dim_offset,
    Transform,
    area_downsample,
)
from score_sde.data.sources import (  # noqa: F401
    SPLIT_SEED,
    DIGITS_TEST_SIZE,
    TOY_SIZES,
    IMAGE_EXTENSIONS,
    SPLITS,
    _SPLIT_CODE,
    Source,
    ArraySource,
    Split,
    _digits_indices,
    _digits,
    ToyGMMParams,
    TOY_GMM,
    toy_gmm_params,
    toy_gmm_mixture,
    _gmm_labeled,
    _gmm_points,
    _checkerboard_points,
    _moons_points,
    _swiss_roll_points,
    _TOY_GENERATORS,
    _toy,
    TOY_COND_NOISE,
    _toy_cond,
    toy_cond_observation,
    CIFAR10_ARCHIVE,
    CIFAR10_FOLDER,
    _CIFAR10_FILES,
    _cifar10,
    _read_file,
    _cifar10_archive,
    _cifar10_split,
    _cifar10_batches,
    _mnist,
    _image_folder,
    _folder_labels,
    _image_paths,
    _load_image,
    _resize_center_crop,
    TfdsSource,
    _tfds_split,
    _tfds_labels,
    _tfds_test_split,
    _tfds,
    LOADERS,
    dataset_names,
    load_split,
    downsample_factor,
    stored_size,
    num_classes,
    cond_names,
    cond_arrays,
    derived_names,
    check_labels,
    _check_image_config,
    _check_levels,
)
from score_sde.data.iterator import (  # noqa: F401
    shard_for_devices,
    pad_batch,
    DataIterator,
    _process_batch,
    _transform,
    get_dataset,
    iterate_once,
    _one_pass,
)

__all__ = ['data_range', 'scale', 'dequantize', 'inverse_scale', 'bits_per_dim_offset', 'Transform', 'SPLIT_SEED', 'DIGITS_TEST_SIZE', 'TOY_SIZES', 'IMAGE_EXTENSIONS', 'SPLITS', 'Source', 'ArraySource', 'Split', 'ToyGMMParams', 'TOY_GMM', 'toy_gmm_params', 'toy_gmm_mixture', 'TOY_COND_NOISE', 'toy_cond_observation', 'CIFAR10_ARCHIVE', 'CIFAR10_FOLDER', 'TfdsSource', 'LOADERS', 'dataset_names', 'load_split', 'downsample_factor', 'stored_size', 'area_downsample', 'num_classes', 'cond_names', 'cond_arrays', 'derived_names', 'check_labels', 'shard_for_devices', 'pad_batch', 'DataIterator', 'get_dataset', 'iterate_once']
