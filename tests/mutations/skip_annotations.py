"""``python tests/mutations/skip_annotations.py SESSION.sqlite``: marks the
pending mutants of a cosmic-ray session that lie inside a type annotation as
skipped. They are equivalent by construction: the mutated modules start with
``from __future__ import annotations``, so annotations are never evaluated
(``int | None`` mutated to ``int - None`` runs the same). Refuses a module
without that import."""

from __future__ import annotations

import ast
import sys

from cosmic_ray.work_db import use_db
from cosmic_ray.work_item import WorkerOutcome, WorkResult


def annotation_spans(source: str) -> list[tuple[tuple[int, int], tuple[int, int]]]:
    tree = ast.parse(source)
    if not any(isinstance(node, ast.ImportFrom) and node.module == "__future__"
               and any(alias.name == "annotations" for alias in node.names) for node in tree.body):
        raise SystemExit("the module does not import annotations from __future__: its annotations are evaluated")
    spans = []
    for node in ast.walk(tree):
        annotations = []
        if isinstance(node, ast.arg) and node.annotation is not None:
            annotations.append(node.annotation)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.returns is not None:
            annotations.append(node.returns)
        elif isinstance(node, ast.AnnAssign):
            annotations.append(node.annotation)
        for annotation in annotations:
            spans.append(((annotation.lineno, annotation.col_offset),
                          (annotation.end_lineno, annotation.end_col_offset)))
    return spans


def main() -> None:
    skipped = []
    with use_db(sys.argv[1]) as work_db:
        spans_of: dict[str, list] = {}
        for item in work_db.pending_work_items:
            for mutation in item.mutations:
                path = str(mutation.module_path)
                if path not in spans_of:
                    with open(path) as module:
                        spans_of[path] = annotation_spans(module.read())
                start, end = tuple(mutation.start_pos), tuple(mutation.end_pos)
                if any(low <= start and end <= high for low, high in spans_of[path]):
                    skipped.append(item.job_id)
        if skipped:
            work_db.set_multiple_results(skipped, WorkResult(
                output="inside an annotation (never evaluated)", worker_outcome=WorkerOutcome.SKIPPED))
    print(f"{len(skipped)} mutants inside annotations skipped")


if __name__ == "__main__":
    main()
