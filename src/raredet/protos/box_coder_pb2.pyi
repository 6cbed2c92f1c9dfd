from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class BoxCoder(_message.Message):
    __slots__ = ("faster_rcnn_box_coder", "mean_stddev_box_coder", "square_box_coder")
    FASTER_RCNN_BOX_CODER_FIELD_NUMBER: _ClassVar[int]
    MEAN_STDDEV_BOX_CODER_FIELD_NUMBER: _ClassVar[int]
    SQUARE_BOX_CODER_FIELD_NUMBER: _ClassVar[int]
    faster_rcnn_box_coder: FasterRcnnBoxCoder
    mean_stddev_box_coder: MeanStddevBoxCoder
    square_box_coder: SquareBoxCoder
    def __init__(self, faster_rcnn_box_coder: _Optional[_Union[FasterRcnnBoxCoder, _Mapping]] = ..., mean_stddev_box_coder: _Optional[_Union[MeanStddevBoxCoder, _Mapping]] = ..., square_box_coder: _Optional[_Union[SquareBoxCoder, _Mapping]] = ...) -> None: ...

class FasterRcnnBoxCoder(_message.Message):
    __slots__ = ("y_scale", "x_scale", "height_scale", "width_scale")
    Y_SCALE_FIELD_NUMBER: _ClassVar[int]
    X_SCALE_FIELD_NUMBER: _ClassVar[int]
    HEIGHT_SCALE_FIELD_NUMBER: _ClassVar[int]
    WIDTH_SCALE_FIELD_NUMBER: _ClassVar[int]
    y_scale: float
    x_scale: float
    height_scale: float
    width_scale: float
    def __init__(self, y_scale: _Optional[float] = ..., x_scale: _Optional[float] = ..., height_scale: _Optional[float] = ..., width_scale: _Optional[float] = ...) -> None: ...

class MeanStddevBoxCoder(_message.Message):
    __slots__ = ("stddev",)
    STDDEV_FIELD_NUMBER: _ClassVar[int]
    stddev: float
    def __init__(self, stddev: _Optional[float] = ...) -> None: ...

class SquareBoxCoder(_message.Message):
    __slots__ = ("y_scale", "x_scale", "length_scale")
    Y_SCALE_FIELD_NUMBER: _ClassVar[int]
    X_SCALE_FIELD_NUMBER: _ClassVar[int]
    LENGTH_SCALE_FIELD_NUMBER: _ClassVar[int]
    y_scale: float
    x_scale: float
    length_scale: float
    def __init__(self, y_scale: _Optional[float] = ..., x_scale: _Optional[float] = ..., length_scale: _Optional[float] = ...) -> None: ...
