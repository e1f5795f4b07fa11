"""Products of one repository: the one definition of their Triton model names, their validation and parsing.

A repository serves one shared extractor ``exdd_features`` and, per product, its own scorer and
ensemble. The model name is the route: product ``line3`` is served by the ensemble ``exdd_line3``
with the scorer ``exdd_line3_scorer``; the default product (a repository built without
``--product``) keeps the names of a one-product repository, ``exdd`` and ``exdd_scorer``.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from typing import Iterable, List, Optional, Tuple

PREFIX = "exdd"
SCORER_SUFFIX = "_scorer"
FEATURES_MODEL = "exdd_features"
PREPROCESS_MODEL = "exdd_preprocess"     # shared: decodes and resizes any picture for every product
DEFAULT_LABEL = "default"              # the `product` of the default product (metrics label, scorer parameter)
NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}")
# names whose models would be the shared models' (exdd_features, exdd_preprocess), the default product's
# scorer (exdd_scorer) or ambiguous with it (the label `default`)
RESERVED = ("features", "preprocess", "scorer", DEFAULT_LABEL)


class ProductError(ValueError):
    """A product name or --product value that cannot be served; the message names it."""


def check_name(name: str) -> str:
    """name if it is a valid product name, else ProductError naming it and the rule."""
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise ProductError(f"product name {name!r}: expected 1-63 lowercase letters, digits, '_' or '-', "
                           "starting with a letter or digit")
    if name in RESERVED:
        raise ProductError(f"product name {name!r} is reserved (the shared models exdd_features, exdd_preprocess, "
                           "the default product's scorer exdd_scorer and label default); "
                           f"reserved: {', '.join(RESERVED)}")
    if name.endswith(SCORER_SUFFIX):
        raise ProductError(f"product name {name!r} ends with {SCORER_SUFFIX!r}: its ensemble would be named like "
                           "another product's scorer")
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
    if model == PREFIX + SCORER_SUFFIX:
        return ProductModels(None)
    if model.startswith(PREFIX + "_") and model.endswith(SCORER_SUFFIX):
        try:
            return ProductModels(model[len(PREFIX) + 1:-len(SCORER_SUFFIX)])
        except ProductError:
            return None
    return None


def check_unique(products: Iterable[Optional[str]]) -> List[ProductModels]:
    """ProductModels of every product, in order; ProductError on a bad or repeated name, or on a default product
    mixed with named ones."""
    out: List[ProductModels] = []
    seen = set()
    for p in products:
        if p in seen:
            raise ProductError(f"product {p!r} is given twice")
        seen.add(p)
        out.append(ProductModels(p))
    if None in seen and len(seen) > 1:
        raise ProductError("a repository serves either one default product or named products (--product), not both")
    if not out:
        raise ProductError("no product to serve: give --banks DIR or --product NAME=BANKS")
    return out


def parse_product(value: str) -> Tuple[str, str]:
    """(name, bank dir) of a ``--product NAME=BANKS`` value; ProductError naming a malformed one."""
    name, sep, banks = str(value).partition("=")
    if not sep or not banks:
        raise ProductError(f"--product {value!r}: expected NAME=BANKS (a product name and its bank directory)")
    return check_name(name.strip()), banks


def products_in(repo: str) -> List[ProductModels]:
    """The products a model repository serves (a scorer and its ensemble, both with config.pbtxt), by name."""
    found = []
    names = os.listdir(repo) if os.path.isdir(repo) else []
    for d in sorted(names):
        pm = of_scorer(d)
        if pm is not None and os.path.isfile(os.path.join(repo, d, "config.pbtxt")) and \
                os.path.isfile(os.path.join(repo, pm.ensemble, "config.pbtxt")):
            found.append(pm)
    return sorted(found, key=lambda pm: (pm.product is not None, pm.product or ""))


def find(repo: str, product: Optional[str]) -> ProductModels:
    """The product of repo that --product names (None: the only one); ProductError listing the served ones."""
    served = products_in(repo)
    known = ", ".join(pm.display for pm in served) or "none"
    if product is None:
        if len(served) == 1:
            return served[0]
        if not served:
            raise ProductError(f"{repo}: not an exdd model repository (no product scorer with config.pbtxt)")
        raise ProductError(f"{repo} serves several products: give --product (one of {known})")
    check_name(product)
    for pm in served:
        if pm.product == product:
            return pm
    raise ProductError(f"{repo}: no product {product!r} (it serves: {known})")
