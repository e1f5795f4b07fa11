"""The Triton model names of a repository, defined once: the server's assembly, the models and the client read them.

A repository serves one shared extractor ``exdd_features`` and, per product, its own scorer and
ensemble. The model name is the route: product ``line3`` is served by the ensemble ``exdd_line3``
with the scorer ``exdd_line3_scorer``; the default product (a repository built without
``--product``) keeps the names of a one-product repository, ``exdd`` and ``exdd_scorer``.
Standard library only: the scorer model imports it from its own copy of this package.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

PREFIX = "exdd"
SCORER_SUFFIX = "_scorer"
FEATURES_MODEL = "exdd_features"
PREPROCESS_MODEL = "exdd_preprocess"  # shared: decodes and resizes any picture for every product
ENSEMBLE_MODEL = PREFIX  # the default product's ensemble, the one clients send pictures to
SCORER_MODEL = PREFIX + SCORER_SUFFIX  # the default product's scorer
DEFAULT_LABEL = "default"  # the `product` of the default product (metrics label, scorer parameter)
# request parameter of a scorer (and so of an ensemble, which passes parameters on): false answers without
# ANOMALY_MAP, which is then not computed. Triton asks an ensemble's scorer for every output, so the client says it.
MAP_PARAMETER = "anomaly_map"
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# names whose models would be the shared models' (exdd_features, exdd_preprocess), the default product's
# scorer (exdd_scorer) or ambiguous with it (the label `default`)
RESERVED = ("features", "preprocess", "scorer", DEFAULT_LABEL)


class ProductError(ValueError):
    """A product name or --product value that cannot be served; the message names it."""


def check_name(name: str) -> str:
    """name if it is a valid product name, else ProductError naming it and the rule."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ProductError(
            f"product name {name!r}: expected 1-63 lowercase letters, digits, '_' or '-', "
            "starting with a letter or digit"
        )
    if name in RESERVED:
        raise ProductError(
            f"product name {name!r} is reserved (the shared models exdd_features, exdd_preprocess, "
            "the default product's scorer exdd_scorer and label default); "
            f"reserved: {', '.join(RESERVED)}"
        )
    if name.endswith(SCORER_SUFFIX):
        raise ProductError(
            f"product name {name!r} ends with {SCORER_SUFFIX!r}: its ensemble would be named like "
            "another product's scorer"
        )
    return name


@dataclass(frozen=True)
class ProductModels:
    """The Triton models of one product (product None: the default product of a one-product repository)."""

    product: Optional[str] = None

    def __post_init__(self) -> None:
        if self.product is not None:
            check_name(self.product)

    @property
    def ensemble(self) -> str:
        """The model clients send IMAGE or IMAGE_BYTES to."""
        return PREFIX if self.product is None else f"{PREFIX}_{self.product}"

    @property
    def scorer(self) -> str:
        """The product's scorer model (its banks, threshold and mode)."""
        return self.ensemble + SCORER_SUFFIX

    @property
    def label(self) -> str:
        """The product's name in metrics labels and the scorer's `product` parameter."""
        return DEFAULT_LABEL if self.product is None else self.product

    @property
    def display(self) -> str:
        """The name shown to users."""
        return "(default, no --product)" if self.product is None else self.product


def of_scorer(model: str) -> Optional[ProductModels]:
    """The product whose scorer is model, or None when model is not a product scorer's name."""
    if model == SCORER_MODEL:
        return ProductModels(None)
    if model.startswith(PREFIX + "_") and model.endswith(SCORER_SUFFIX):
        try:
            return ProductModels(model[len(PREFIX) + 1 : -len(SCORER_SUFFIX)])
        except ProductError:
            return None
    return None
