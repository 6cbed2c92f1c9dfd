from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Matcher(_message.Message):
    __slots__ = ("argmax_matcher", "bipartite_matcher")
    ARGMAX_MATCHER_FIELD_NUMBER: _ClassVar[int]
    BIPARTITE_MATCHER_FIELD_NUMBER: _ClassVar[int]
    argmax_matcher: ArgMaxMatcher
    bipartite_matcher: BipartiteMatcher
    def __init__(self, argmax_matcher: _Optional[_Union[ArgMaxMatcher, _Mapping]] = ..., bipartite_matcher: _Optional[_Union[BipartiteMatcher, _Mapping]] = ...) -> None: ...

class ArgMaxMatcher(_message.Message):
    __slots__ = ("matched_threshold", "unmatched_threshold", "ignore_thresholds", "negatives_lower_than_unmatched", "force_match_for_each_row", "use_matmul_gather")
    MATCHED_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    UNMATCHED_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    IGNORE_THRESHOLDS_FIELD_NUMBER: _ClassVar[int]
    NEGATIVES_LOWER_THAN_UNMATCHED_FIELD_NUMBER: _ClassVar[int]
    FORCE_MATCH_FOR_EACH_ROW_FIELD_NUMBER: _ClassVar[int]
    USE_MATMUL_GATHER_FIELD_NUMBER: _ClassVar[int]
    matched_threshold: float
    unmatched_threshold: float
    ignore_thresholds: bool
    negatives_lower_than_unmatched: bool
    force_match_for_each_row: bool
    use_matmul_gather: bool
    def __init__(self, matched_threshold: _Optional[float] = ..., unmatched_threshold: _Optional[float] = ..., ignore_thresholds: _Optional[bool] = ..., negatives_lower_than_unmatched: _Optional[bool] = ..., force_match_for_each_row: _Optional[bool] = ..., use_matmul_gather: _Optional[bool] = ...) -> None: ...

class BipartiteMatcher(_message.Message):
    __slots__ = ("use_matmul_gather",)
    USE_MATMUL_GATHER_FIELD_NUMBER: _ClassVar[int]
    use_matmul_gather: bool
    def __init__(self, use_matmul_gather: _Optional[bool] = ...) -> None: ...

class RegionSimilarityCalculator(_message.Message):
    __slots__ = ("neg_sq_dist_similarity", "iou_similarity", "ioa_similarity", "thresholded_iou_similarity")
    NEG_SQ_DIST_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    IOU_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    IOA_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    THRESHOLDED_IOU_SIMILARITY_FIELD_NUMBER: _ClassVar[int]
    neg_sq_dist_similarity: NegSqDistSimilarity
    iou_similarity: IouSimilarity
    ioa_similarity: IoaSimilarity
    thresholded_iou_similarity: ThresholdedIouSimilarity
    def __init__(self, neg_sq_dist_similarity: _Optional[_Union[NegSqDistSimilarity, _Mapping]] = ..., iou_similarity: _Optional[_Union[IouSimilarity, _Mapping]] = ..., ioa_similarity: _Optional[_Union[IoaSimilarity, _Mapping]] = ..., thresholded_iou_similarity: _Optional[_Union[ThresholdedIouSimilarity, _Mapping]] = ...) -> None: ...

class NegSqDistSimilarity(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IouSimilarity(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IoaSimilarity(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ThresholdedIouSimilarity(_message.Message):
    __slots__ = ("iou_threshold",)
    IOU_THRESHOLD_FIELD_NUMBER: _ClassVar[int]
    iou_threshold: float
    def __init__(self, iou_threshold: _Optional[float] = ...) -> None: ...
