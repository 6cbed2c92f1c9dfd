from raredet.protos import ssd_pb2 as _ssd_pb2
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class DetectionModel(_message.Message):
    __slots__ = ("ssd",)
    SSD_FIELD_NUMBER: _ClassVar[int]
    ssd: _ssd_pb2.Ssd
    def __init__(self, ssd: _Optional[_Union[_ssd_pb2.Ssd, _Mapping]] = ...) -> None: ...
