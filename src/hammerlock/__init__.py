"""hammerlock: the payments and trust backbone of online auction marketplaces.

Packages are vertical slices (see docs/architecture.md); nothing is created at import time.
"""

__version__ = "0.1.0"
