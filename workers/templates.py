"""The one prompt-template loader: versioned text files shipped inside a package's ``templates/`` folder.

Every prompt lives at ``<package>/templates/<parts...>.txt`` (the parts end with a version folder and the
prompt's name, e.g. ``("instruct", "v1", "write")``); the version is stored on every record that used it.
Read with ``importlib.resources`` so installed wheels work, and cached: a template is read once per process.
"""

from functools import cache
from importlib import resources
from string import Template


@cache
def load_template(package: str, *parts: str) -> Template:
    """``<package>/templates/<parts[0]>/.../<parts[-1]>.txt`` as a ``string.Template``."""
    *folders, name = parts
    path = resources.files(package).joinpath("templates", *folders, f"{name}.txt")
    return Template(path.read_text(encoding="utf-8"))
