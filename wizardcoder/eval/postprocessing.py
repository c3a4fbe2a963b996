"""Turning a raw model answer (`response`) into a program.

Two rule sets:
- `wizardcoder`: the rules of WizardCoder's own scripts (nlpxucan/WizardLM, WizardCoder/src/process_humaneval.py,
  process_mbpp.py, mbppplus_process_preds.py), plus the tab -> 4 spaces its generation scripts apply: take the code
  from the first ```python block, and cut at `if __name__ == "__main__":`, `# Example usage`, `# Test examples`
  (MBPP) or the first `assert` (MBPP+). DS-1000 uses DS-1000's own postprocess (cut at </code>, ``` and
  END SOLUTION).
- `sanitize`: syntax-aware (after evalplus's sanitizer): take the code (first ```python block, else the text), keep
  the longest prefix that parses, then only the imports and the top-level definitions the entry point reaches
  (functions, classes, assignments), in their original order.
`none` passes the text through. Which rule a task uses, with which fence and cut markers, is the benchmark's
(`Benchmark.postprocess`).
"""
from __future__ import annotations

import ast

STYLES = ("wizardcoder", "sanitize", "none")
MAIN_GUARD = 'if __name__ == "__main__":'


def _cut(code: str, marker: str) -> str:
    i = code.find(marker)
    return code[:i].strip() if i >= 0 else code


def _python_block(code: str, closing: str) -> str:
    """WizardCoder's block rule: from the first ```python, drop the fence, stop at `closing` if present."""
    if "```python" not in code:
        return code
    code = code[code.index("```python"):].strip().replace("```python", "")
    i = code.find(closing)
    return code[:i].strip() if i >= 0 else code


def wizardcoder(text: str, fence_close: str = "```", cuts: tuple[str, ...] = (MAIN_GUARD, "# Example usage")) -> str:
    """WizardCoder's post-processing of one response: tabs back to spaces, the first ```python block (ending at
    `fence_close`: "```" for HumanEval, "\\n```" for MBPP), then cut before each of `cuts` in turn (each benchmark
    gives its own: see benchmarks/)."""
    code = text.replace("\t", "    ").replace("\r", "")
    code = _python_block(code, fence_close)
    for marker in cuts:
        code = _cut(code, marker)
    return code


def ds1000(text: str) -> str:
    """DS-1000's own postprocess (xlang-ai/DS-1000 test_ds1000.py)."""
    code = text.split("</code>")[0]
    code = code.replace("```python", "")
    code = code.split("```")[0]
    code = code.split("\nEND SOLUTION")[0]
    return code.replace("<code>", "")


# ------------------------------------------------------------------------------------------------ sanitizer

def extract_code(text: str) -> str:
    """The first ```python (or bare ```) block, else the whole text; tabs and carriage returns normalised."""
    text = text.replace("\r", "").replace("\t", "    ")
    for fence in ("```python", "```py\n", "```\n"):
        i = text.find(fence)
        if i >= 0:
            body = text[i + len(fence):]
            j = body.find("```")
            return body[:j] if j >= 0 else body
    return text


def longest_parsable_prefix(code: str) -> str:
    """The longest prefix of whole lines that parses (a response cut off mid-statement still yields its complete
    definitions)."""
    lines = code.split("\n")
    for end in range(len(lines), 0, -1):
        chunk = "\n".join(lines[:end])
        try:
            ast.parse(chunk)
            return chunk
        except (SyntaxError, ValueError, MemoryError, RecursionError):
            continue
    return ""


def _defined_names(node: ast.stmt) -> list[str]:
    if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        return [node.name]
    targets = []
    if isinstance(node, ast.Assign):
        targets = node.targets
    elif isinstance(node, (ast.AnnAssign, ast.AugAssign)):
        targets = [node.target]
    names = []
    for t in targets:
        for n in ast.walk(t):
            if isinstance(n, ast.Name):
                names.append(n.id)
    return names


def _used_names(node: ast.AST) -> set[str]:
    return {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} | {
        n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute)}


def sanitize(text: str, entry_point: str | None = None) -> str:
    """Imports plus the definitions reachable from `entry_point` (all definitions when it is None or absent)."""
    code = longest_parsable_prefix(extract_code(text))
    if not code.strip():
        return ""
    tree = ast.parse(code)
    imports, defs = [], {}
    order = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            imports.append(node)
            order.append(node)
            continue
        names = _defined_names(node)
        if names:
            for name in names:
                defs[name] = node
            order.append(node)
    if entry_point and entry_point in defs:
        keep: set[int] = set()
        todo = [entry_point]
        seen = set()
        while todo:
            name = todo.pop()
            if name in seen or name not in defs:
                continue
            seen.add(name)
            node = defs[name]
            keep.add(id(node))
            todo.extend(_used_names(node) - seen)
    else:
        keep = {id(n) for n in defs.values()}
    parts = []
    for n in order:
        if isinstance(n, (ast.Import, ast.ImportFrom)) or id(n) in keep:
            # decorators are not part of a node's source segment
            decos = "".join("@" + ast.get_source_segment(code, d) + "\n" for d in getattr(n, "decorator_list", []))
            parts.append(decos + ast.get_source_segment(code, n))
    return "\n".join(parts) + "\n"
