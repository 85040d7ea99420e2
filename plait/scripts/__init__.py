"""The commands ``ipcontroller``, ``ipengine`` and ``ipcluster``."""
