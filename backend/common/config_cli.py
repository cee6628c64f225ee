"""Command-line options generated from config dataclasses, read from their source code.

The modules that hold the configs import torch, and `python -m backend <cmd> --help` must stay instant, so
the dataclasses are not imported here: `read_config("backend.activations.cache:CacheConfig")` parses the
module with `ast` and turns each field into an `Option` (EleutherAI sparsify's convention: the string literal
under a field is its help text; Python keeps no such docstring at run time anyway):

    ctx_len: int = 128                     --ctx-len      type int, help = docstring + "(default: 128)"
    signed: bool = False                   --signed       a switch; a field defaulting to True gives --no-NAME
    dtype: Literal["float16", "float32"]   --dtype        choices
    ms: list[int] = field(default_factory=lambda: [4, 6], metadata={"flag": "m"})
                                           --m            comma-separated ("4,6"); `flag` renames the option
    ref: tuple[int, int] = field(default=(8, 3), metadata={"metavar": "M,K"})
                                           --ref          comma-separated, exactly two

Base classes are followed (also across modules), names in defaults and annotations are resolved through
module-level constants and imports, and a field with `metadata={"cli": False}` gets no option.
Every option defaults to argparse.SUPPRESS: the parsed namespace holds only what was given, and the dataclass
applies its own default, written once in the dataclass. `given_values` converts what was given (a bad list is
a `UserError`, one line).
"""

from __future__ import annotations

import argparse
import ast
import functools
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from backend.common.errors import UserError

ROOT = Path(__file__).resolve().parents[2]  # the folder holding the `backend` package
SCALARS = {"int": int, "float": float, "str": str, "bool": bool}
ITEM_WORDS = {"int": "integers", "float": "numbers", "str": "names"}
SAFE_BUILTINS = {"list": list, "tuple": tuple, "dict": dict, "set": set, "frozenset": frozenset, "str": str,
                 "int": int, "float": float, "bool": bool, "len": len, "range": range}
NO_DEFAULT = object()  # a field without a default (required)


class ConfigSourceError(Exception):
    """A config the generator cannot express as options (a programming error, not the user's)."""


@dataclass(frozen=True)
class Option:
    """One command-line option made from one dataclass field (or from same-named fields of several configs)."""

    field: str  # the field name, also the argparse dest
    flag: str  # e.g. "--ctx-len"
    type: str  # int | float | str | bool
    sequence: str | None  # None, "list" or "tuple": given as comma-separated items of `type`
    length: int | None  # a tuple's number of items
    choices: tuple | None  # from a Literal[...] annotation
    default: Any  # the evaluated default (NO_DEFAULT if none; the source text if it could not be evaluated)
    doc: str  # the field's docstring, whitespace collapsed
    metavar: str | None
    owners: tuple[str, ...]  # who has the field: the config class, or the labels given to `merge_options`
    help: str = ""

    def convert(self, raw: Any) -> Any:
        """The field value for what argparse parsed (items of a sequence are split at commas)."""
        if self.sequence is None:
            return raw
        items = [t.strip() for t in str(raw).split(",") if t.strip()]
        try:
            values = [SCALARS[self.type](t) for t in items]
        except ValueError:
            raise UserError(f"{self.flag} must be comma-separated {ITEM_WORDS[self.type]}, got {raw!r}") from None
        if not values:
            raise UserError(f"{self.flag} is empty")
        if self.sequence == "tuple":
            if len(values) != self.length:
                raise UserError(f"{self.flag} must be {self.metavar}, got {raw!r}")
            return tuple(values)
        return values


# --- reading a module's source -------------------------------------------------------------------------------------
@dataclass
class _Module:
    name: str
    tree: ast.Module
    classes: dict[str, ast.ClassDef]
    assigned: dict[str, ast.expr]  # module-level NAME = <expr>
    imported: dict[str, tuple[str, str]]  # local name -> (module, name) for `from backend... import name`


def _module_path(module: str) -> Path:
    base = ROOT / module.replace(".", "/")
    path = base.with_suffix(".py")
    return path if path.is_file() else base / "__init__.py"


@functools.lru_cache(maxsize=None)
def _module(module: str) -> _Module:
    path = _module_path(module)
    try:
        tree = ast.parse(path.read_text(), str(path))
    except OSError as e:
        raise ConfigSourceError(f"cannot read {module} ({path}): {e}") from None
    classes, assigned, imported = {}, {}, {}
    for node in tree.body:
        if isinstance(node, ast.ClassDef):
            classes[node.name] = node
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            assigned[node.targets[0].id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            assigned[node.target.id] = node.value
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                imported[alias.asname or alias.name] = (node.module, alias.name)
    return _Module(module, tree, classes, assigned, imported)


def _lookup(module: str, name: str, seen: frozenset = frozenset()) -> tuple[str, ast.AST] | None:
    """Where `name` is defined, following `from backend... import` chains: (module, ClassDef or value expr)."""
    if (module, name) in seen:
        return None
    m = _module(module)
    if name in m.classes:
        return module, m.classes[name]
    if name in m.assigned:
        return module, m.assigned[name]
    if name in m.imported and m.imported[name][0].split(".")[0] == __name__.split(".")[0]:  # our own package
        src, orig = m.imported[name]
        return _lookup(src, orig, seen | {(module, name)})
    return None


def _evaluate(module: str, expr: ast.expr) -> Any:
    """The value of a default expression: literals, arithmetic, and names of constants (also imported ones)."""
    names = {}
    for node in ast.walk(expr):
        if isinstance(node, ast.Name) and node.id not in SAFE_BUILTINS:
            found = _lookup(module, node.id)
            if found is None or isinstance(found[1], ast.ClassDef):
                raise ConfigSourceError(f"{node.id} is not a constant of {module}")
            names[node.id] = _evaluate(*found)
    code = compile(ast.fix_missing_locations(ast.Expression(body=expr)), f"<default in {module}>", "eval")
    return eval(code, {"__builtins__": SAFE_BUILTINS}, names)  # only literals and the names resolved above


def _default(module: str, value: ast.expr | None) -> tuple[Any, dict]:
    """(default, field metadata) of a field's right-hand side: a plain default or `field(...)`."""
    if value is None:
        return NO_DEFAULT, {}
    meta: dict = {}
    if isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "field":
        kw = {k.arg: k.value for k in value.keywords}
        meta = _evaluate(module, kw["metadata"]) if "metadata" in kw else {}
        if "default" in kw:
            value = kw["default"]
        elif "default_factory" in kw:
            factory = kw["default_factory"]
            value = factory.body if isinstance(factory, ast.Lambda) else ast.Call(factory, [], [])
        else:
            return NO_DEFAULT, meta
    try:
        return _evaluate(module, value), meta
    except ConfigSourceError:
        return ast.unparse(value), meta  # shown as written, e.g. a call the generator does not run


def _annotation(module: str, ann: ast.expr) -> tuple[str, str | None, int | None, tuple | None]:
    """(item type, sequence kind, tuple length, choices) of an annotation; `X | None` counts as X."""
    if isinstance(ann, ast.BinOp) and isinstance(ann.op, ast.BitOr):
        parts = [p for p in (ann.left, ann.right) if not (isinstance(p, ast.Constant) and p.value is None)]
        if len(parts) == 1:
            return _annotation(module, parts[0])
    if isinstance(ann, ast.Name):
        if ann.id in SCALARS:
            return ann.id, None, None, None
        found = _lookup(module, ann.id)  # a type alias such as Format = Literal["csv", "json"]
        if found is not None and not isinstance(found[1], ast.ClassDef):
            return _annotation(*found)
    if isinstance(ann, ast.Subscript) and isinstance(ann.value, ast.Name):
        args = ann.slice.elts if isinstance(ann.slice, ast.Tuple) else [ann.slice]
        if ann.value.id == "Literal":
            choices = tuple(_evaluate(module, a) for a in args)
            kinds = {type(c).__name__ for c in choices}
            if len(kinds) == 1 and kinds <= set(SCALARS):
                return kinds.pop(), None, None, choices
        if ann.value.id in ("list", "tuple") and len({ast.dump(a) for a in args if not isinstance(a, ast.Constant)}) == 1:
            item = _annotation(module, args[0])
            if item[1] is None and item[0] != "bool":
                length = None if ann.value.id == "list" or isinstance(args[-1], ast.Constant) else len(args)
                return item[0], "list" if length is None else "tuple", length, item[3]
    raise ConfigSourceError(f"{module}: cannot make an option of type {ast.unparse(ann)}")


def _own_fields(module: str, cls: ast.ClassDef) -> list[tuple[str, Option | None]]:
    """(name, option) per field declared in `cls` itself; None for a field marked metadata={"cli": False}."""
    out = []
    body = cls.body
    for i, node in enumerate(body):
        if not isinstance(node, ast.AnnAssign) or not isinstance(node.target, ast.Name):
            continue
        if "ClassVar" in ast.unparse(node.annotation):
            continue
        name = node.target.id
        default, meta = _default(module, node.value)
        if meta.get("cli") is False:
            out.append((name, None))
            continue
        try:
            typ, seq, length, choices = _annotation(module, node.annotation)
        except ConfigSourceError as e:
            raise ConfigSourceError(f"{e} (field {cls.name}.{name})") from None
        nxt = body[i + 1] if i + 1 < len(body) else None
        is_doc = isinstance(nxt, ast.Expr) and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)
        doc = " ".join(nxt.value.value.split()) if is_doc else ""
        flag = "--" + meta.get("flag", name).replace("_", "-")
        metavar = meta.get("metavar") or (",".join([typ.upper()] * length) if seq == "tuple" else None)
        out.append((name, Option(name, flag, typ, seq, length, choices, default, doc, metavar, (cls.name,))))
    return out


def _linearised(module: str, name: str) -> list[tuple[str, ast.ClassDef]]:
    """The class and its bases, most derived first (depth-first, a repeated base kept at its last place)."""
    found = _lookup(module, name)
    if found is None or not isinstance(found[1], ast.ClassDef):
        raise ConfigSourceError(f"no class {name} in {module}")
    mod, cls = found
    order = [(mod, cls)]
    for base in cls.bases:
        if isinstance(base, ast.Name) and base.id not in ("object", "Generic"):
            order += _linearised(mod, base.id)
    out = []
    for i, item in enumerate(order):
        if all(item[1] is not later[1] for later in order[i + 1:]):
            out.append(item)
    return out


def read_config(ref: str) -> list[Option]:
    """The options of the dataclass `ref` ("package.module:Class"), in field order, inherited fields included."""
    module, name = ref.split(":")
    fields: dict[str, Option | None] = {}
    for mod, cls in reversed(_linearised(module, name)):
        for field, opt in _own_fields(mod, cls):
            base = fields.get(field)
            if opt is not None and base is not None and not opt.doc:  # an override without a docstring keeps the base's
                opt = replace(opt, doc=base.doc)
            fields[field] = opt
    return [replace(o, owners=(name,), help=help_text(o)) for o in fields.values() if o is not None]


def find_assigned(package: str, attr: str, key: str) -> dict[str, str]:
    """{value of `key`: "module:Class" of `attr`} for the classes of `package` that set both, e.g. with
    attr="config_class", key="kind": each dictionary kind -> its config dataclass (no import)."""
    out = {}
    for path in sorted(_module_path(package).parent.glob("*.py")):
        if attr not in path.read_text():
            continue
        module = f"{package}.{path.stem}"
        for cls in _module(module).classes.values():
            values = {n.targets[0].id: n.value for n in cls.body
                      if isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Name)}
            if key in values and isinstance(values.get(attr), ast.Name):
                where = _lookup(module, values[attr].id)
                if where is None:
                    raise ConfigSourceError(f"{module}: {attr} {values[attr].id} not found")
                out[_evaluate(module, values[key])] = f"{where[0]}:{values[attr].id}"
    return out


def module_constant(module: str, name: str) -> Any:
    """A module-level constant's value, read from the source (e.g. a tuple of names)."""
    found = _lookup(module, name)
    if found is None or isinstance(found[1], ast.ClassDef):
        raise ConfigSourceError(f"no constant {name} in {module}")
    return _evaluate(*found)


# --- help texts and merging ---------------------------------------------------------------------------------------
def _shown(value: Any) -> str | None:
    if value is NO_DEFAULT or value is None or isinstance(value, bool):
        return None  # required, explained by the docstring, or a switch
    if isinstance(value, (list, tuple)):
        return ",".join(map(str, value))
    return str(value)


def help_text(o: Option) -> str:
    shown = _shown(o.default)
    return o.doc + (f" (default: {shown})" if shown is not None else "")


def merge_options(labelled: dict[str, list[Option]]) -> list[Option]:
    """One option per field over several configs (e.g. the kinds of `train`): owners are the labels that have
    it; the help gives each distinct docstring and default with the labels it belongs to."""
    by_field: dict[str, list[tuple[str, Option]]] = {}
    for label, options in labelled.items():
        for o in options:
            by_field.setdefault(o.field, []).append((label, o))
    merged = []
    for name, pairs in by_field.items():
        first = pairs[0][1]
        shapes = {(o.flag, o.type, o.sequence, o.length, o.choices) for _, o in pairs}
        if len(shapes) > 1:
            raise ConfigSourceError(f"field {name} has different types across {', '.join(lab for lab, _ in pairs)}")
        owners = tuple(label for label, _ in pairs)
        merged.append(replace(first, owners=owners, help=_merged_help(pairs, list(labelled))))
    return merged


def _merged_help(pairs: list[tuple[str, Option]], labels: list[str]) -> str:
    def grouped(key) -> list[tuple[Any, list[str]]]:
        groups: dict[Any, list[str]] = {}
        for label, o in pairs:
            groups.setdefault(key(o), []).append(label)
        return list(groups.items())

    docs = grouped(lambda o: o.doc.rstrip("."))
    if len(docs) == 1 and len(pairs) == len(labels):
        text = docs[0][0]
    else:  # say whose option it is
        text = "; ".join(f"{', '.join(owners)}: {doc}" for doc, owners in docs)
    defaults = [(d, owners) for d, owners in grouped(lambda o: _shown(o.default)) if d is not None]
    if not defaults:
        return text
    if len(defaults) == 1 and len(defaults[0][1]) == len(pairs):
        return f"{text} (default: {defaults[0][0]})"
    return text + " (default: " + "; ".join(f"{', '.join(owners)} {d}" for d, owners in defaults) + ")"


# --- argparse -------------------------------------------------------------------------------------------------------
def add_options(parser, options: list[Option]) -> None:
    """Declare `options` on an argparse parser or group; nothing given leaves no attribute (SUPPRESS)."""
    for o in options:
        text = o.help.replace("%", "%%")  # argparse %-formats help strings
        if o.type == "bool":  # a switch that flips the default
            on = o.default is True
            flag = "--no-" + o.flag[2:] if on else o.flag
            parser.add_argument(flag, dest=o.field, default=argparse.SUPPRESS, action="store_false" if on else "store_true",
                                help=text + (f" (on by default; {flag} turns it off)" if on else ""))
            continue
        metavar = o.metavar or (o.flag[2:].upper() + ",..." if o.sequence else None)
        kw = dict(type=str if o.sequence else SCALARS[o.type], choices=None if o.sequence else o.choices)
        parser.add_argument(o.flag, dest=o.field, default=argparse.SUPPRESS, metavar=metavar, help=text, **kw)


def given_values(namespace: argparse.Namespace, options: list[Option]) -> dict[str, Any]:
    """{field: value} for the options given on the command line, converted (UserError for a bad list)."""
    return {o.field: o.convert(getattr(namespace, o.field)) for o in options if hasattr(namespace, o.field)}
