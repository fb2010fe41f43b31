"""The ground floor: errors, atomic writes, progress, timing, settings, versions, and the one IPEX import."""
from qat.base.errors import QatError

__all__ = ["QatError"]
