"""Data paths: the strings that name a view's inputs.

A path is ``<type>#<body>``: ``view#roi``, ``internal#train_id``,
``karabo#SA1_XTD2_XGM/XGM/DOOCS:output[data.intensityTD]``.  Each type is a
:class:`Path` subclass registered by its ``alias`` class keyword, so that a
frontend can add its own (EXtra-foam defines ``class FoamPath(Path,
alias='foam')``).  ``str(path)`` is the full, normalised path, and is the key
under which a frontend puts the value into an event dict.
"""

from __future__ import annotations

import re

__all__ = ["Path", "ViewPath", "InternalPath", "path_types", "split_type"]

_TYPE_RE = re.compile(r"^([A-Za-z_][A-Za-z0-9_]*)#(.*)$", re.DOTALL)


def split_type(path):
    """``('view', 'roi')`` for ``'view#roi'``; ``(None, path)`` without a type."""
    m = _TYPE_RE.match(path)
    if m is None:
        return None, path
    return m.group(1), m.group(2)


class Path:
    """Base of all path types.

    Subclasses override :meth:`parse` to validate (raise ValueError) and
    normalise a full path, and :meth:`extract` to pull their value out of a
    frontend's data object.  A base ``Path`` accepts any full path; stages use
    it for types their process does not know, since the frontend that sent
    the context already validated them.
    """

    #: The type prefix this class handles, set by the ``alias`` class keyword.
    alias = None
    #: Registered path types by alias.
    _types: dict[str, type[Path]] = {}

    def __init_subclass__(cls, alias=None, **kwargs):
        super().__init_subclass__(**kwargs)
        if alias is not None:
            cls.alias = alias
            Path._types[alias] = cls

    def __init__(self, path):
        if self.alias is not None and split_type(path)[0] is None:
            path = f"{self.alias}#{path}"
        self._full_path = path
        self._full_path = self.parse(path)

    def parse(self, path):
        """Validate and normalise the full path `path`; return it."""
        kind, body = split_type(path)
        if kind is None or not body:
            raise ValueError(f"{path!r} is not a path of the form type#body")
        return path

    @staticmethod
    def strip_type(path):
        """The body of a full path, without its ``type#`` prefix."""
        return split_type(str(path))[1]

    @property
    def type(self):
        return split_type(self._full_path)[0]

    @property
    def body(self):
        return self.strip_type(self._full_path)

    def extract(self, data):
        """This path's value from a frontend data object (subclasses)."""
        raise NotImplementedError(f"{type(self).__name__} cannot extract data")

    @classmethod
    def accepts_bare(cls, body):
        """Whether an unprefixed string in this type's syntax is this type."""
        return False

    def __str__(self):
        return self._full_path

    def __repr__(self):
        return f"{type(self).__name__}({self._full_path!r})"

    def __eq__(self, other):
        if isinstance(other, Path):
            return self._full_path == other._full_path
        if isinstance(other, str):
            return self._full_path == other
        return NotImplemented

    def __hash__(self):
        return hash(self._full_path)

    def __reduce__(self):
        return (type(self), (self._full_path,))


def path_types():
    """The registered path types, by alias."""
    return dict(Path._types)


class ViewPath(Path, alias="view"):
    """The result of another view: ``view#<name>``."""

    def parse(self, path):
        super().parse(path)
        return path

    @property
    def view_name(self):
        return self.body


#: Internal paths every event carries (filled by the frontend or source).
INTERNAL_NAMES = ("train_id", "event_id", "sequence_id", "ctx_version")

_IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class InternalPath(Path, alias="internal"):
    """Values that come with every event: ``internal#train_id`` and friends.

    The standard names are ``train_id``, ``event_id``, ``sequence_id`` and
    ``ctx_version``; a frontend may add more, so any identifier is accepted.
    """

    def parse(self, path):
        super().parse(path)
        if not _IDENT_RE.match(self.strip_type(path)):
            raise ValueError(f"{path!r}: internal paths are identifiers, "
                             f"e.g. internal#train_id")
        return path

    @property
    def name(self):
        return self.body

    def extract(self, data):
        return data[self.body]
