from typing import Any

from foolscap.remoteinterface import RemoteInterface as RemoteInterface

class DeadReferenceError(Exception): ...

class Referenceable: ...

class Tub:
    def __init__(
        self,
        certData: str | None = ...,
        certFile: str | None = ...,
        _test_options: dict[str, Any] = ...,
    ) -> None: ...
    negotiationClass: Any
    def __getattr__(self, name: str) -> Any: ...
