"""Griffe extension for the docs build: render Sphinx roles in docstrings as inline code.

The package's docstrings use reST roles (:func:`fit`, :class:`~bayesdl.models.BNN`), which
mkdocstrings would otherwise print literally. A role becomes plain inline code showing the name as
Sphinx would (a leading ``~`` keeps the last component). Roles are not turned into links: a link
to a page that does not exist yet would fail ``mkdocs build --strict``.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|obj|exc|const):`(~?)([^`]+)`")


def _replace(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


class SphinxRoles(griffe.Extension):
    """Rewrite ``:role:`target``` to ```target``` in every docstring of the loaded objects."""

    def on_object(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _ROLE.sub(_replace, obj.docstring.value)
