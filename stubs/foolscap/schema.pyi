from typing import Any as _Any

# Constraints are only built and handed to foolscap: typed loosely.
Any: _Any
BooleanConstraint: _Any
ByteStringConstraint: _Any
ChoiceOf: _Any
DictOf: _Any
IntegerConstraint: _Any
NumberConstraint: _Any
ListOf: _Any
Optional: _Any
TupleOf: _Any
UnicodeConstraint: _Any

class Violation(Exception): ...
