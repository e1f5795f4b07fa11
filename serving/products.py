"""Products of one repository: which a repository serves, and parsing ``--product``.

Their Triton model names are defined once in ``exdd_scoring.model_names`` (shared with the client and the
scorer model) and re-exported here.
"""

from __future__ import annotations

import os
from typing import Iterable, List, Optional, Tuple

from exdd_scoring.model_names import (  # noqa: F401
    DEFAULT_LABEL,
    ENSEMBLE_MODEL,
    FEATURES_MODEL,
    NAME_RE,
    PREFIX,
    PREPROCESS_MODEL,
    RESERVED,
    SCORER_MODEL,
    SCORER_SUFFIX,
    ProductError,
    ProductModels,
    check_name,
    of_scorer,
)


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
        if (
            pm is not None
            and os.path.isfile(os.path.join(repo, d, "config.pbtxt"))
            and os.path.isfile(os.path.join(repo, pm.ensemble, "config.pbtxt"))
        ):
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
