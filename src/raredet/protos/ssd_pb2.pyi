from raredet.protos import anchor_generator_pb2 as _anchor_generator_pb2
from raredet.protos import box_coder_pb2 as _box_coder_pb2
from raredet.protos import box_predictor_pb2 as _box_predictor_pb2
from raredet.protos import hyperparams_pb2 as _hyperparams_pb2
from raredet.protos import image_resizer_pb2 as _image_resizer_pb2
from raredet.protos import losses_pb2 as _losses_pb2
from raredet.protos import matcher_pb2 as _matcher_pb2
from raredet.protos import post_processing_pb2 as _post_processing_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Ssd(_message.Message):
    __slots__ = ("num_classes", "image_resizer", "feature_extractor", "box_coder", "matcher", "similarity_calculator", "encode_background_as_zeros", "negative_class_weight", "box_predictor", "anchor_generator", "post_processing", "normalize_loss_by_num_matches", "normalize_loc_loss_by_codesize", "loss", "freeze_batchnorm", "inplace_batchnorm_update", "add_background_class", "explicit_background_class", "use_confidences_as_targets", "implicit_example_weight", "return_raw_detections_during_predict")
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    IMAGE_RESIZER_FIELD_NUMBER: _ClassVar[int]
    FEATURE_EXTRACTOR_FIELD_NUMBER: _ClassVar[int]
    BOX_CODER_FIELD_NUMBER: _ClassVar[int]
    MATCHER_FIELD_NUMBER: _ClassVar[int]
    SIMILARITY_CALCULATOR_FIELD_NUMBER: _ClassVar[int]
    ENCODE_BACKGROUND_AS_ZEROS_FIELD_NUMBER: _ClassVar[int]
    NEGATIVE_CLASS_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    BOX_PREDICTOR_FIELD_NUMBER: _ClassVar[int]
    ANCHOR_GENERATOR_FIELD_NUMBER: _ClassVar[int]
    POST_PROCESSING_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_LOSS_BY_NUM_MATCHES_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_LOC_LOSS_BY_CODESIZE_FIELD_NUMBER: _ClassVar[int]
    LOSS_FIELD_NUMBER: _ClassVar[int]
    FREEZE_BATCHNORM_FIELD_NUMBER: _ClassVar[int]
    INPLACE_BATCHNORM_UPDATE_FIELD_NUMBER: _ClassVar[int]
    ADD_BACKGROUND_CLASS_FIELD_NUMBER: _ClassVar[int]
    EXPLICIT_BACKGROUND_CLASS_FIELD_NUMBER: _ClassVar[int]
    USE_CONFIDENCES_AS_TARGETS_FIELD_NUMBER: _ClassVar[int]
    IMPLICIT_EXAMPLE_WEIGHT_FIELD_NUMBER: _ClassVar[int]
    RETURN_RAW_DETECTIONS_DURING_PREDICT_FIELD_NUMBER: _ClassVar[int]
    num_classes: int
    image_resizer: _image_resizer_pb2.ImageResizer
    feature_extractor: SsdFeatureExtractor
    box_coder: _box_coder_pb2.BoxCoder
    matcher: _matcher_pb2.Matcher
    similarity_calculator: _matcher_pb2.RegionSimilarityCalculator
    encode_background_as_zeros: bool
    negative_class_weight: float
    box_predictor: _box_predictor_pb2.BoxPredictor
    anchor_generator: _anchor_generator_pb2.AnchorGenerator
    post_processing: _post_processing_pb2.PostProcessing
    normalize_loss_by_num_matches: bool
    normalize_loc_loss_by_codesize: bool
    loss: _losses_pb2.Loss
    freeze_batchnorm: bool
    inplace_batchnorm_update: bool
    add_background_class: bool
    explicit_background_class: bool
    use_confidences_as_targets: bool
    implicit_example_weight: float
    return_raw_detections_during_predict: bool
    def __init__(self, num_classes: _Optional[int] = ..., image_resizer: _Optional[_Union[_image_resizer_pb2.ImageResizer, _Mapping]] = ..., feature_extractor: _Optional[_Union[SsdFeatureExtractor, _Mapping]] = ..., box_coder: _Optional[_Union[_box_coder_pb2.BoxCoder, _Mapping]] = ..., matcher: _Optional[_Union[_matcher_pb2.Matcher, _Mapping]] = ..., similarity_calculator: _Optional[_Union[_matcher_pb2.RegionSimilarityCalculator, _Mapping]] = ..., encode_background_as_zeros: _Optional[bool] = ..., negative_class_weight: _Optional[float] = ..., box_predictor: _Optional[_Union[_box_predictor_pb2.BoxPredictor, _Mapping]] = ..., anchor_generator: _Optional[_Union[_anchor_generator_pb2.AnchorGenerator, _Mapping]] = ..., post_processing: _Optional[_Union[_post_processing_pb2.PostProcessing, _Mapping]] = ..., normalize_loss_by_num_matches: _Optional[bool] = ..., normalize_loc_loss_by_codesize: _Optional[bool] = ..., loss: _Optional[_Union[_losses_pb2.Loss, _Mapping]] = ..., freeze_batchnorm: _Optional[bool] = ..., inplace_batchnorm_update: _Optional[bool] = ..., add_background_class: _Optional[bool] = ..., explicit_background_class: _Optional[bool] = ..., use_confidences_as_targets: _Optional[bool] = ..., implicit_example_weight: _Optional[float] = ..., return_raw_detections_during_predict: _Optional[bool] = ...) -> None: ...

class SsdFeatureExtractor(_message.Message):
    __slots__ = ("type", "depth_multiplier", "min_depth", "conv_hyperparams", "override_base_feature_extractor_hyperparams", "pad_to_multiple", "use_explicit_padding", "use_depthwise", "fpn", "replace_preprocessor_with_placeholder", "num_layers", "bifpn")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DEPTH_MULTIPLIER_FIELD_NUMBER: _ClassVar[int]
    MIN_DEPTH_FIELD_NUMBER: _ClassVar[int]
    CONV_HYPERPARAMS_FIELD_NUMBER: _ClassVar[int]
    OVERRIDE_BASE_FEATURE_EXTRACTOR_HYPERPARAMS_FIELD_NUMBER: _ClassVar[int]
    PAD_TO_MULTIPLE_FIELD_NUMBER: _ClassVar[int]
    USE_EXPLICIT_PADDING_FIELD_NUMBER: _ClassVar[int]
    USE_DEPTHWISE_FIELD_NUMBER: _ClassVar[int]
    FPN_FIELD_NUMBER: _ClassVar[int]
    REPLACE_PREPROCESSOR_WITH_PLACEHOLDER_FIELD_NUMBER: _ClassVar[int]
    NUM_LAYERS_FIELD_NUMBER: _ClassVar[int]
    BIFPN_FIELD_NUMBER: _ClassVar[int]
    type: str
    depth_multiplier: float
    min_depth: int
    conv_hyperparams: _hyperparams_pb2.Hyperparams
    override_base_feature_extractor_hyperparams: bool
    pad_to_multiple: int
    use_explicit_padding: bool
    use_depthwise: bool
    fpn: FeaturePyramidNetworks
    replace_preprocessor_with_placeholder: bool
    num_layers: int
    bifpn: BidirectionalFeaturePyramidNetworks
    def __init__(self, type: _Optional[str] = ..., depth_multiplier: _Optional[float] = ..., min_depth: _Optional[int] = ..., conv_hyperparams: _Optional[_Union[_hyperparams_pb2.Hyperparams, _Mapping]] = ..., override_base_feature_extractor_hyperparams: _Optional[bool] = ..., pad_to_multiple: _Optional[int] = ..., use_explicit_padding: _Optional[bool] = ..., use_depthwise: _Optional[bool] = ..., fpn: _Optional[_Union[FeaturePyramidNetworks, _Mapping]] = ..., replace_preprocessor_with_placeholder: _Optional[bool] = ..., num_layers: _Optional[int] = ..., bifpn: _Optional[_Union[BidirectionalFeaturePyramidNetworks, _Mapping]] = ...) -> None: ...

class FeaturePyramidNetworks(_message.Message):
    __slots__ = ("min_level", "max_level", "additional_layer_depth")
    MIN_LEVEL_FIELD_NUMBER: _ClassVar[int]
    MAX_LEVEL_FIELD_NUMBER: _ClassVar[int]
    ADDITIONAL_LAYER_DEPTH_FIELD_NUMBER: _ClassVar[int]
    min_level: int
    max_level: int
    additional_layer_depth: int
    def __init__(self, min_level: _Optional[int] = ..., max_level: _Optional[int] = ..., additional_layer_depth: _Optional[int] = ...) -> None: ...

class BidirectionalFeaturePyramidNetworks(_message.Message):
    __slots__ = ("min_level", "max_level", "num_iterations", "num_filters", "combine_method")
    MIN_LEVEL_FIELD_NUMBER: _ClassVar[int]
    MAX_LEVEL_FIELD_NUMBER: _ClassVar[int]
    NUM_ITERATIONS_FIELD_NUMBER: _ClassVar[int]
    NUM_FILTERS_FIELD_NUMBER: _ClassVar[int]
    COMBINE_METHOD_FIELD_NUMBER: _ClassVar[int]
    min_level: int
    max_level: int
    num_iterations: int
    num_filters: int
    combine_method: str
    def __init__(self, min_level: _Optional[int] = ..., max_level: _Optional[int] = ..., num_iterations: _Optional[int] = ..., num_filters: _Optional[int] = ..., combine_method: _Optional[str] = ...) -> None: ...
