"""rayrt: elastic cloud radiotherapy treatment planning on Ray.

The package has two layers. The *core* (``domain``, ``imaging``, ``contour``, ``dose``,
``optimize``, ``convert``, ``qa``, ``pipeline``) is plain numpy/scipy/numba and knows nothing of
Ray or HTTP. The *service* (``rayrt.service``) is the only layer that imports Ray.
"""

__version__ = "0.1.0"
