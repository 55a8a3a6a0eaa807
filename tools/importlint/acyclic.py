"""An import-linter contract that fails on any import circle between the modules of a package.

import-linter's own ``acyclic_siblings`` works at the level of sibling packages, which also
forbids two packages that use each other through unrelated modules. What makes code hard
to read and to load is a circle of *modules*: ``a`` needs ``b`` to import, and ``b`` needs
``a``. This contract finds every module that can reach itself through the import graph
(function-level and ``TYPE_CHECKING`` imports included) and reports one circle per group.
"""

from __future__ import annotations

import grimp
from importlinter.application import output
from importlinter.domain import fields
from importlinter.domain.contract import Contract, ContractCheck

__all__ = ["AcyclicModulesContract"]


def _strongly_connected(modules: set[str], edges: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iteratively: the groups of modules that import each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    groups: list[list[str]] = []
    counter = 0
    for root in sorted(modules):
        if root in index:
            continue
        work: list[tuple[str, list[str]]] = [(root, sorted(edges.get(root, ())))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, pending = work[-1]
            if pending:
                nxt = pending.pop()
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, sorted(edges.get(nxt, ()))))
                elif nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return groups


class AcyclicModulesContract(Contract):
    """No module of ``packages`` reaches itself through imports.

    Configuration::

        [[tool.importlinter.contracts]]
        type = "acyclic_modules"
        packages = ["cloud"]
    """

    type_name = "acyclic_modules"
    packages = fields.ListField(subfield=fields.StringField())

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        circles: list[list[str]] = []
        for package in self.packages:
            modules = {m for m in graph.modules if m == package or m.startswith(package + ".")}
            edges = {m: {i for i in graph.find_modules_directly_imported_by(m) if i in modules} for m in modules}
            for group in _strongly_connected(modules, edges):
                # One concrete circle through the group's first module, for the report.
                first = group[0]
                back = next(i for i in sorted(edges[first]) if i in group)
                chain = graph.find_shortest_chain(importer=back, imported=first) or (back, first)
                circles.append([first, *chain])
        return ContractCheck(kept=not circles, metadata={"circles": circles})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for circle in check.metadata["circles"]:
            output.print_error(" -> ".join(circle), bold=True)
            output.new_line()
