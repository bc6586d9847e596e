"""Dependencies point one way: the project's import graph (every import,
those inside functions included, plus the lazy names of a package's
``_LAZY`` table and the built-in entries of the rule and architecture
registries) has no circle, and no module imports from a layer above its own.
The layers are the ones drawn in docs/code-layout.md."""
import ast
import fnmatch
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGES = ("models", "benchmark", "biobench")

# Bottom first. A module imports only from layers below its own, or from the
# modules of its own family (a "pkg.*" entry: the package and everything in it,
# e.g. the rules, which subclass one another). Every module must be listed.
LAYERS = [
    ("models.errors", "models.registry", "models.inputs", "models.optim"),
    ("models.feedback",),
    ("models.layers",),
    ("models.lc", "models.chain", "models.attention", "models.blocks"),
    ("models.inverses",),
    ("models.rules.*",),
    ("models.convert",),
    ("models.networks", "models.zoo", "models.vit"),
    ("models.archs",),
    ("models",),
    ("benchmark", "benchmark.errors", "benchmark.io", "benchmark.locks", "benchmark.early_stopping",
     "benchmark.runtime", "benchmark.pools"),
    ("benchmark.paths", "benchmark.records"),
    ("benchmark.config", "benchmark.data", "benchmark.checkpoints", "benchmark.alignment", "benchmark.board",
     "benchmark.results", "benchmark.cite"),
    ("benchmark.run_model",),
    ("benchmark.tables", "benchmark.plots"),
    ("benchmark.campaign", "benchmark.report", "benchmark.part_tables"),
    ("benchmark.robustness.*",),
    ("benchmark.train",),
    ("benchmark.runs", "benchmark.perf"),
    ("benchmark.grid",),
    ("benchmark.cluster",),
    ("benchmark.executors",),
    ("benchmark.search",),
    ("cli", "biobench"),
]


def project_modules():
    """``{dotted name: path}`` of every module of the packages and cli.py."""
    found = {"cli": os.path.join(ROOT, "cli.py")}
    for package in PACKAGES:
        for folder, _, files in os.walk(os.path.join(ROOT, package)):
            for name in files:
                if name.endswith(".py"):
                    path = os.path.join(folder, name)
                    dotted = os.path.relpath(path, ROOT)[:-3].replace(os.sep, ".")
                    found[dotted.removesuffix(".__init__")] = path
    return found


def _enclosing(name, modules):
    """The project module ``name`` lives in (itself or the nearest package above), or None."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def imports_of(name, path, modules):
    """The project modules that module ``name`` imports anywhere in its text."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    package = name if path.endswith("__init__.py") else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets |= {_enclosing(alias.name, modules) for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[:len(package.split(".")) - node.level + 1]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module
            for alias in node.names:  # "from pkg import module" imports the module
                submodule = f"{source}.{alias.name}"
                targets.add(submodule if submodule in modules else _enclosing(source, modules))
        elif (isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "_LAZY" for t in node.targets)
              and isinstance(node.value, ast.Dict)):  # PEP 562 lazy names: modules imported on first access
            strings = [c.value for c in node.value.keys + node.value.values
                       if isinstance(c, ast.Constant) and isinstance(c.value, str)]
            targets |= {_enclosing(text, modules) for text in strings if _enclosing(text, modules)}
    return targets - {None, name}


def registry_edges():
    """Built-in ``"module:attribute"`` entries: the registering module imports them on first use."""
    from models.archs import ARCHS
    from models.rules import RULES
    # The sources, not the entries: an entry used earlier in the session is
    # the loaded object by now, while its source still names the module.
    return {owner: {source[len("built-in ("):-1] for source in registry._sources.values()
                    if source.startswith("built-in (")}
            for owner, registry in (("models.rules", RULES), ("models.archs", ARCHS))}


def import_graph():
    modules = project_modules()
    graph = {name: imports_of(name, path, modules) for name, path in modules.items()}
    for owner, targets in registry_edges().items():
        graph[owner] |= targets - {owner}
    return graph


def layer_of(module):
    """``(index, family pattern or None)`` of the layer listing ``module`` (the longest matching entry)."""
    matches = []
    for index, layer in enumerate(LAYERS):
        for entry in layer:
            if entry == module:
                matches.append((len(entry) + 1, index, None))  # an exact entry beats a family
            elif entry.endswith(".*") and (module == entry[:-2] or fnmatch.fnmatchcase(module, entry)):
                matches.append((len(entry), index, entry))
    if not matches:
        return None
    _, index, family = max(matches)
    return index, family


def cycles(graph):
    """The strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph.get(node, ())):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_import_graph_sees_lazy_imports():
    graph = import_graph()
    assert "benchmark.errors" in graph["cli"]  # top level
    assert "benchmark.runs" in graph["cli"]  # inside a function
    assert "models.networks" in graph["models.archs"]  # a built-in registry entry
    assert "models.rules.bp" in graph["models.rules"]
    assert "models.lc" in graph["models"]  # a _LAZY name
    assert "benchmark.train" in graph["biobench"]


def test_no_import_circles():
    found = cycles(import_graph())
    assert not found, "import circles: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_module_has_a_layer():
    unplaced = [m for m in sorted(project_modules()) if layer_of(m) is None]
    assert not unplaced, f"add to LAYERS (and docs/code-layout.md): {', '.join(unplaced)}"


def test_imports_point_down_the_layers():
    upward = []
    for module, targets in sorted(import_graph().items()):
        here = layer_of(module)
        for target in sorted(targets):
            there = layer_of(target)
            if here is None or there is None:
                continue  # test_every_module_has_a_layer names them
            if there[0] > here[0] or (there[0] == here[0] and (here[1] is None or here[1] != there[1])):
                upward.append(f"{module} (layer {here[0]}) imports {target} (layer {there[0]})")
    assert not upward, "\n".join(upward)
