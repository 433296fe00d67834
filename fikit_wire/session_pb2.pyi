from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Hello(_message.Message):
    __slots__ = ("protocol_version", "client_name", "priority", "staging_path")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CLIENT_NAME_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    STAGING_PATH_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    client_name: str
    priority: int
    staging_path: str
    def __init__(self, protocol_version: _Optional[int] = ..., client_name: _Optional[str] = ..., priority: _Optional[int] = ..., staging_path: _Optional[str] = ...) -> None: ...

class Welcome(_message.Message):
    __slots__ = ("protocol_version", "server_version", "backend", "session_id", "staging")
    PROTOCOL_VERSION_FIELD_NUMBER: _ClassVar[int]
    SERVER_VERSION_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STAGING_FIELD_NUMBER: _ClassVar[int]
    protocol_version: int
    server_version: str
    backend: str
    session_id: int
    staging: bool
    def __init__(self, protocol_version: _Optional[int] = ..., server_version: _Optional[str] = ..., backend: _Optional[str] = ..., session_id: _Optional[int] = ..., staging: _Optional[bool] = ...) -> None: ...

class ClientFrame(_message.Message):
    __slots__ = ("hello", "calls")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    calls: bytes
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., calls: _Optional[bytes] = ...) -> None: ...

class ServerFrame(_message.Message):
    __slots__ = ("welcome", "replies")
    WELCOME_FIELD_NUMBER: _ClassVar[int]
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    welcome: Welcome
    replies: bytes
    def __init__(self, welcome: _Optional[_Union[Welcome, _Mapping]] = ..., replies: _Optional[bytes] = ...) -> None: ...
