"""The project's own code that a stage module runs: the stages/ files it imports, read from the
source with `ast` (imports inside functions count; those under `if TYPE_CHECKING:` do not), and
their digest (less NOT_DEPS). Training checkpoints and crop's and coarse_predict's job keys hold
the digest of their stage's code: a run of other code never resumes them
(tests/unit/test_architecture.py checks dvc.yaml's deps against the same files).
"""
from __future__ import annotations

import ast
import hashlib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DIGEST_CHARS = 16
# Code a stage runs that is no dep on purpose: the params loader and schema (a stage's params
# leaves are its deps, and its identities hold the values they give) and the command-line /
# logging entry, which change no output.
NOT_DEPS = frozenset({"stages/common/params.py", "stages/common/schema.py", "stages/common/stage.py"})


def _type_checking_only(tree: ast.AST) -> set[int]:
    """ids of the import nodes inside `if TYPE_CHECKING:` blocks (never run)."""
    return {id(node) for block in ast.walk(tree) if isinstance(block, ast.If)
            and isinstance(block.test, ast.Name) and block.test.id == "TYPE_CHECKING"
            for node in ast.walk(block)}


def module_file(module: str) -> Path | None:
    """stages.a.b -> stages/a/b.py (or the package's __init__.py), None when it is neither."""
    base = ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """The stages.* modules a file imports at run time ('stages.face.warp', ...); `from stages.face
    import ibug68` counts as stages.face.ibug68."""
    tree = ast.parse(path.read_text(), str(path))
    skip, found = _type_checking_only(tree), set()
    for node in ast.walk(tree):
        if id(node) in skip:
            continue
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("stages.")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "stages":
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if module_file(sub) else node.module)
    return {m for m in found if module_file(m)}


def code_closure(module: str) -> set[str]:
    """Every stages/ file (path relative to the repository, packages' __init__.py left out) that
    running `python -m <module>` imports."""
    seen, todo = set(), [module]
    while todo:
        current = todo.pop()
        rel = module_file(current).relative_to(ROOT).as_posix()
        if rel in seen:
            continue
        seen.add(rel)
        todo += imported_modules(ROOT / rel)
    return {f for f in seen if not f.endswith("__init__.py")}


def code_digest(module: str) -> str:
    """Digest of the names and bytes of code_closure(module)'s files, NOT_DEPS left out (as
    dvc.yaml leaves them out of a stage's deps: a key added to the schema for another stage
    discarded every stage's resumable work)."""
    digest = hashlib.sha256()
    for rel in sorted(code_closure(module) - NOT_DEPS):
        source = (ROOT / rel).read_bytes()
        digest.update(f"{rel}\0{len(source)}\0".encode() + source)
    return digest.hexdigest()[:DIGEST_CHARS]
