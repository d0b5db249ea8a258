"""Prompt templates: discover, load and render Jinja templates into chat messages.

A template lives at `<dir>/<suite>/<stance>/<name>.jinja` (blocks `system` and `user`; a file without
blocks is one user message) or `<name>.yaml` (keys `system` and `user`, each a Jinja string). Its id is
`suite/stance/name` and its sha256 is taken over the file's bytes, so every row rendered from it can
carry a hash that changes exactly when the template does.

Rendering runs in jinja2's sandbox with StrictUndefined: a template can only read the variables it is
given and cannot reach Python internals. This module must not know about suites or sampling.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from .errors import ReconError

STANCES = ("discourage", "neutral", "permit", "custom")
ROLES = ("system", "user")
BLOCK = "\x00block:"  # marks a part whose text is a whole file rendered one block at a time
SUFFIXES = (".jinja", ".yaml", ".yml")


def builtin_template_dir() -> Path:
    """The repo's `templates/` folder (also shipped inside the wheel as recon_data/_templates)."""
    packaged = Path(__file__).parent / "_templates"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "templates"


@dataclass(frozen=True)
class Template:
    """One template file; `parts` maps role -> Jinja source (parsed once, rendered many times)."""

    id: str
    suite: str
    stance: str
    name: str
    path: Path
    source: str
    sha256: str
    parts: tuple[tuple[str, str], ...] = field(repr=False, default=())


_ENV = SandboxedEnvironment(
    undefined=jinja2.StrictUndefined, autoescape=False, keep_trailing_newline=False, trim_blocks=True,
    lstrip_blocks=True,
)


def _parts_from_jinja(source: str, where: Path) -> tuple[tuple[str, str], ...]:
    """Blocks `system`/`user` become messages; a block is rendered through Jinja itself (see render)."""
    try:
        ast = _ENV.parse(source)
    except jinja2.TemplateSyntaxError as err:
        raise ReconError(f"template {where}:{err.lineno}: syntax error: {err.message}") from None
    blocks = [node.name for node in ast.find_all(jinja2.nodes.Block)]
    unknown = set(blocks) - set(ROLES)
    if unknown:
        raise ReconError(f"template {where}: unknown block(s) {sorted(unknown)}; use 'system' and 'user'")
    if not blocks:
        return (("user", source),)
    return tuple((role, BLOCK + source) for role in ROLES if role in blocks)


def _parts_from_yaml(source: str, where: Path) -> tuple[tuple[str, str], ...]:
    try:
        data = yaml.safe_load(source)
    except yaml.YAMLError as err:
        raise ReconError(f"template {where}: invalid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(data, dict) or "user" not in data:
        raise ReconError(f"template {where}: expected a mapping with 'user' (and optional 'system') strings")
    extra = set(data) - set(ROLES) - {"description"}
    if extra:
        raise ReconError(f"template {where}: unknown key(s) {sorted(extra)}; allowed: system, user, description")
    parts = []
    for role in ROLES:
        if role in data:
            if not isinstance(data[role], str):
                raise ReconError(f"template {where}: '{role}' must be a string")
            parts.append((role, data[role]))
    return tuple(parts)


def load_file(path: Path, root: Path | None = None) -> Template:
    """Load one template file; its id comes from its place under `root` (suite/stance/name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
        source = raw.decode("utf-8")
    except FileNotFoundError:
        raise ReconError(f"template file not found: {path}") from None
    except UnicodeDecodeError:
        raise ReconError(f"template {path}: not UTF-8 text") from None
    if root is not None:
        rel = path.relative_to(root).with_suffix("")
        bits = rel.parts
    else:
        bits = path.with_suffix("").parts[-3:]
    suite, stance, name = (("custom",) * 3 + tuple(bits))[-3:]
    parts = _parts_from_yaml(source, path) if path.suffix in (".yaml", ".yml") else _parts_from_jinja(source, path)
    for _role, text in parts:  # compile now so syntax errors surface at load time, not mid-run
        _compile(text.removeprefix(BLOCK), str(path))
    return Template(
        id=f"{suite}/{stance}/{name}", suite=suite, stance=stance, name=name, path=path, source=source,
        sha256=hashlib.sha256(raw).hexdigest(), parts=parts,
    )


@lru_cache(maxsize=4096)
def _compile(text: str, where: str) -> jinja2.Template:
    try:
        return _ENV.from_string(text)
    except jinja2.TemplateSyntaxError as err:
        raise ReconError(f"template {where}:{err.lineno}: syntax error: {err.message}") from None


def template_dirs(extra_dirs: Sequence[Path | str] = ()) -> list[Path]:
    """Search order: user dirs first (so they can shadow built-ins), then the built-in dir."""
    dirs = [Path(d) for d in extra_dirs]
    for d in dirs:
        if not d.is_dir():
            raise ReconError(f"template dir not found: {d}")
    return [*dirs, builtin_template_dir()]


def discover(extra_dirs: Sequence[Path | str] = ()) -> dict[str, Template]:
    """All templates by id; a user dir's template shadows a built-in one with the same id."""
    found: dict[str, Template] = {}
    for root in reversed(template_dirs(extra_dirs)):
        if not root.is_dir():
            continue
        for path in sorted(root.rglob("*")):
            if path.suffix in SUFFIXES and path.is_file() and len(path.relative_to(root).parts) == 3:
                t = load_file(path, root)
                found[t.id] = t
    return dict(sorted(found.items()))


def load_template(ref: str, extra_dirs: Sequence[Path | str] = ()) -> Template:
    """Load by id (`suite/stance/name`) or by file path."""
    p = Path(ref)
    if p.suffix in SUFFIXES and p.is_file():
        return load_file(p)
    for root in template_dirs(extra_dirs):
        for suffix in SUFFIXES:
            candidate = root / f"{ref}{suffix}"
            if candidate.is_file():
                return load_file(candidate, root)
    known = ", ".join(list(discover(extra_dirs))[:8])
    raise ReconError(f"template '{ref}' not found; ids look like suite/stance/name (e.g. {known}) "
                     "— see `recon templates list`")


def render(t: Template, variables: Mapping) -> list[dict]:
    """Render to chat messages; empty system parts are dropped."""
    messages = []
    for role, text in t.parts:
        try:
            if text.startswith(BLOCK):
                compiled = _compile(text[len(BLOCK):], str(t.path))
                context = compiled.new_context(dict(variables))
                content = "".join(compiled.blocks[role](context)).strip()
            else:
                content = _compile(text, str(t.path)).render(dict(variables)).strip()
        except jinja2.UndefinedError as err:
            raise ReconError(f"template {t.id}: {err.message}; the record provides: "
                             f"{', '.join(sorted(variables)) or 'nothing'}") from None
        except SecurityError as err:
            raise ReconError(f"template {t.id}: refused unsafe access ({err})") from None
        except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as err:
            raise ReconError(f"template {t.id}: {type(err).__name__}: {err}") from None
        if content or role == "user":
            messages.append({"role": role, "content": content})
    return messages
