# Minimal type stubs for the parts of foolscap that plait uses (foolscap
# publishes no type information).  The point is RemoteInterface: at run time
# it is a zope InterfaceClass, so declaring it as an Interface lets mypy-zope
# treat the RI... classes as interfaces (methods without self, @implementer).
