from zope.interface import Interface
from zope.interface.interface import InterfaceClass

# At run time RemoteInterface is an instance of RemoteInterfaceClass, a zope
# InterfaceClass: RI[name] (InterfaceClass.__getitem__) is the schema of the
# remote method ``name``, and RI.__remote_name__ the name on the wire.
class RemoteInterfaceClass(InterfaceClass):
    __remote_name__: str

class RemoteInterface(Interface, metaclass=RemoteInterfaceClass): ...
