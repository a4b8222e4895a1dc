"""What each encoder takes as input, and whether a dataset's items fit it (no torch: config validation
asks before anything is built; the encoders themselves are in :mod:`pipeline.train.encoders`)."""

from __future__ import annotations

ENCODERS: tuple[str, ...] = ("ufm", "mlp", "cnn1d", "cnn", "resnet")
# the input each encoder takes: the number of dims of one item (None: any, flattened; 0: an index)
INPUT_NDIM: dict[str, int | None] = {"ufm": 0, "mlp": None, "cnn1d": 2, "cnn": 3, "resnet": 3}


def input_mismatch(encoder: str, input_shape: tuple[int, ...]) -> str | None:
    """Why ``encoder`` cannot take items of ``input_shape`` (None when it can).

    Examples
    --------
    >>> input_mismatch("cnn", (1, 40))
    "cnn takes (1, H, W) images; the data's items are (1, 40)"
    >>> input_mismatch("cnn1d", (1, 40)) is None
    True
    """
    ndim = INPUT_NDIM[encoder]
    if ndim is None or ndim == 0 or len(input_shape) == ndim:
        return None
    need = {2: "(1, L) signals", 3: "(1, H, W) images"}[ndim]
    return f"{encoder} takes {need}; the data's items are {tuple(input_shape)}"
