"""The optional frameworks (extras mteb, langchain, llamaindex, ray) are imported by their adapter module only, and no
other embzoo module imports an adapter: `import embzoo` works without them."""

import ast
from pathlib import Path

import embzoo

PACKAGE = Path(embzoo.__file__).parent
ADAPTERS = {
    "mteb": "integrations/mteb.py",
    "langchain_core": "integrations/langchain.py",
    "llama_index": "integrations/llamaindex.py",
    "ray": "integrations/ray.py",
}


def imported(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
    return names


def test_frameworks_are_imported_by_their_adapters_only():
    for path in PACKAGE.rglob("*.py"):
        where = path.relative_to(PACKAGE).as_posix()
        for name in imported(path):
            top = name.split(".")[0]
            assert top not in ADAPTERS or ADAPTERS[top] == where, f"{where} imports {name}"
            adapter = name.removeprefix("embzoo.").replace(".", "/") + ".py"
            assert adapter not in ADAPTERS.values() or adapter == where, f"{where} imports the adapter {name}"
