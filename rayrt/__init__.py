"""rayrt: elastic cloud radiotherapy treatment planning on Ray.

The package has two layers. The *core* (``domain``, ``imaging``, ``contour``, ``dose``,
``optimize``, ``convert``, ``qa``, ``pipeline``) is plain numpy/scipy/numba and knows nothing of
Ray or HTTP. The *service* (``rayrt.service``) is the only layer that imports Ray.
"""

import os as _os

__version__ = "0.1.0"

# numba's parallel kernels run on OpenMP; GNU libgomp's workers spin after every parallel region
# and take CPU from the thread running the rest of the work when cores are shared (Ray workers,
# other users). Sleeping workers measured 2-4x faster on the shared 2-core machine (see
# rayrt.optimize._threads). Set before any kernel starts OpenMP, unless the user chose a policy.
_os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
