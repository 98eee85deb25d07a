"""Standard sample-quality metrics for image datasets: FID, KID and Inception Score.

The network is the FID Inception-v3 of pytorch-fid, in Flax (`inception.py`); its weights come
only from the user's local copy of pytorch-fid's `pt_inception-2015-12-05-*.pth`, read without
torch (`weights.py`). Nothing is downloaded.
"""

from score_sde.metrics.scores import (FeatureStats, InceptionNet, feature_stats, fid, fid_from_features,
                                   frechet_distance, inception_features, inception_net, inception_outputs,
                                   inception_score, kid, load_inception, load_stats, reference_stats, save_stats,
                                   to_uint8)
from score_sde.metrics.inception import FIDInceptionV3, bilinear_resize
from score_sde.metrics.weights import (WeightsError, expected_state_dict_shapes, load_inception_variables,
                                       read_state_dict, state_dict_to_variables, write_state_dict)

__all__ = ["FeatureStats", "InceptionNet", "feature_stats", "fid", "fid_from_features", "frechet_distance",
           "inception_features", "inception_net", "inception_outputs", "inception_score", "kid", "load_inception",
           "load_stats", "reference_stats", "save_stats", "to_uint8", "FIDInceptionV3", "bilinear_resize",
           "WeightsError", "expected_state_dict_shapes", "load_inception_variables", "read_state_dict",
           "state_dict_to_variables", "write_state_dict"]
