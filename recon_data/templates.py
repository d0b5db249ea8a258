"""Prompt templates: discover, load and render Jinja templates into chat messages.

A template lives at `<dir>/<suite>/<stance>/<name>.jinja` (blocks `system` and `user`; a file without
blocks is one user message) or `<name>.yaml` (keys `system` and `user`, each a Jinja string). Its id is
`suite/stance/name` and its sha256 is taken over the file's bytes, so every row rendered from it can
carry a hash that changes exactly when the template does.

Rendering runs in jinja2's sandbox with StrictUndefined: a template can only read the variables it is
given and cannot reach Python internals. The sandbox is also bounded, so a hostile template fails with
one line instead of eating the machine: `*`, `**`, `+`, `%` and `~` refuse results beyond a size cap,
calls and filters refuse huge sizes and arguments, `range` is capped at MAX_RANGE items and gives up
after RENDER_TIME_LIMIT_S of iterating, `render` arms a wall-clock timer (main thread only) and turns
MemoryError into a ReconError. These are guards against runaway templates, not a resource jail.
This module must not know about suites or sampling.
"""

from __future__ import annotations

import functools
import hashlib
import re
import signal
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.compiler import CodeGenerator
from jinja2.runtime import markup_join, str_join
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


MAX_RANGE = 100_000  # items one range() may have
MAX_STR = 10_000_000  # characters one operator, call or filter may produce (a 5 MB record field fits)
MAX_ITEMS = 1_000_000  # items of one list/tuple an operator or call may produce
MAX_INT_BITS = 100_000  # bits of an integer result (~30,000 digits)
MAX_OUTPUT = 100_000_000  # characters of one rendered message
RENDER_TIME_LIMIT_S = 5.0  # a legitimate template renders in milliseconds
_RANGE_CHECK_EVERY = 1024  # range items between two clock reads
_BIG_WIDTH = re.compile(r"\d{7,}")  # a width / precision of a million or more in a format spec
_PRINTF_SPEC = re.compile(r"%(?:\([^)]*\))?[-#0 +]*(?:\*|\d*)(?:\.(?:\*|\d*))?")
_STR_FORMAT_SPEC = re.compile(r"\{[^{}]*:[^{}]*\}")


class TemplateLimit(SecurityError):
    """A template asked for more than the sandbox allows (size or time)."""


class RenderTimeout(Exception):
    """Rendering ran past RENDER_TIME_LIMIT_S (raised by the timer or by a long range loop)."""


def _check_result(value: Any, what: str) -> Any:
    if isinstance(value, (str, bytes, bytearray)):
        if len(value) > MAX_STR:
            raise TemplateLimit(f"{what} would make a string of {len(value):,} characters (limit {MAX_STR:,})")
    elif isinstance(value, (list, tuple)) and len(value) > MAX_ITEMS:
        raise TemplateLimit(f"{what} would make a list of {len(value):,} items (limit {MAX_ITEMS:,})")
    return value


def _check_repeat(seq: Any, times: Any, op: str) -> None:
    """`seq * times` is refused before it is built when the result would pass the caps."""
    if isinstance(times, int) and isinstance(seq, (str, bytes, bytearray, list, tuple)):
        cap = MAX_ITEMS if isinstance(seq, (list, tuple)) else MAX_STR
        if len(seq) * max(times, 0) > cap:
            raise TemplateLimit(f"'{op}' would repeat a {type(seq).__name__} of {len(seq):,} items "
                                f"{times:,} times (limit {cap:,})")


def _check_ints(args: Sequence[Any], what: str) -> None:
    """A size-like argument (width, count) beyond the string cap is refused before the call runs."""
    for a in args:
        if type(a) is int and abs(a) > MAX_STR:
            raise TemplateLimit(f"{what} got the argument {a:,}, beyond the limit {MAX_STR:,}")


def _check_format_spec(fmt: Any, what: str) -> None:
    """'%09999999d' or '{:9999999}' would allocate the width before any result check could run."""
    if not isinstance(fmt, str) or ("%" not in fmt and "{" not in fmt):
        return
    for spec in [*_PRINTF_SPEC.findall(fmt), *_STR_FORMAT_SPEC.findall(fmt)]:
        if _BIG_WIDTH.search(spec) or (spec.startswith("%") and "*" in spec):
            raise TemplateLimit(f"{what}: a format width or precision of a million or more (or '*') "
                                "is not allowed")


class _TimedRange(Sequence):
    """range() for templates: same items, but iterating gives up after RENDER_TIME_LIMIT_S, so nested
    loops stop even where no timer can run (worker threads, the relabel fast path)."""

    def __init__(self, rng: range) -> None:
        self._rng = rng

    def __len__(self) -> int:
        return len(self._rng)

    def __getitem__(self, index):
        return self._rng[index]

    def __contains__(self, value: object) -> bool:
        return value in self._rng

    def __reversed__(self) -> Iterator[int]:
        return _TimedRange(self._rng[::-1]).__iter__()

    def __iter__(self) -> Iterator[int]:
        deadline = time.monotonic() + RENDER_TIME_LIMIT_S
        rng = self._rng
        for start in range(0, len(rng), _RANGE_CHECK_EVERY):
            if time.monotonic() > deadline:
                raise RenderTimeout(RENDER_TIME_LIMIT_S)
            yield from rng[start : start + _RANGE_CHECK_EVERY]

    def __repr__(self) -> str:
        return repr(self._rng)


def _range(*args: int) -> Sequence[int]:
    rng = range(*args)
    if len(rng) > MAX_RANGE:
        raise TemplateLimit(f"range() of {len(rng):,} items is beyond the limit {MAX_RANGE:,}")
    return rng if len(rng) <= _RANGE_CHECK_EVERY else _TimedRange(rng)


class _BoundedCodeGenerator(CodeGenerator):
    """Routes `a ~ b` through `environment.bounded_concat` (jinja2 compiles it to a bare join otherwise)."""

    def visit_Concat(self, node: jinja2.nodes.Concat, frame) -> None:
        self.write("environment.bounded_concat(context, (")
        for arg in node.nodes:
            self.visit(arg, frame)
            self.write(", ")
        self.write("))")


class _BoundedSandbox(SandboxedEnvironment):
    """jinja2's sandbox plus size caps on operators, calls, filters and `~` (see the module docstring)."""

    code_generator_class = _BoundedCodeGenerator
    intercepted_binops = frozenset(["*", "**", "+", "%"])

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.globals["range"] = _range
        self.filters = {name: _bounded_filter(name, f) for name, f in self.filters.items()}

    def call_binop(self, context, op: str, left: Any, right: Any) -> Any:
        if op == "**":
            if (type(left) is int and type(right) is int and right > 0 and abs(left) > 1
                    and right * abs(left).bit_length() > MAX_INT_BITS):
                raise TemplateLimit(f"'{left} ** {right}' is too large (limit {MAX_INT_BITS:,} bits)")
        elif op == "*":
            _check_repeat(left, right, op)
            _check_repeat(right, left, op)
            if type(left) is int and type(right) is int and left.bit_length() + right.bit_length() > MAX_INT_BITS:
                raise TemplateLimit(f"'*' would make an integer beyond {MAX_INT_BITS:,} bits")
        elif op == "%":
            _check_format_spec(left, "'%' formatting")
        elif op == "+" and isinstance(left, (str, bytes, list, tuple)) and isinstance(right, type(left)):
            cap = MAX_ITEMS if isinstance(left, (list, tuple)) else MAX_STR
            if len(left) + len(right) > cap:
                raise TemplateLimit(f"'+' would make a {type(left).__name__} of length {len(left) + len(right):,} "
                                    f"items (limit {cap:,})")
        return self.binop_table[op](left, right)

    def call(__self, __context, __obj: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: N805 - jinja2's signature
        if getattr(__obj, "__self__", None).__class__ in (str, list, tuple):
            _check_ints([*args, *kwargs.values()], f"{getattr(__obj, '__name__', 'call')}()")
        for a in (*args, *kwargs.values()):  # stops doubling through macro arguments as well
            _check_result(a, "a call argument")
        return _check_result(super().call(__context, __obj, *args, **kwargs), "a call")

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapper = super().wrap_str_format(value)
        if wrapper is None:
            return None
        fmt = value.__self__

        def checked(*args: Any, **kwargs: Any) -> str:
            _check_format_spec(fmt, "str.format")
            return _check_result(wrapper(*args, **kwargs), "str.format")

        return checked

    def bounded_concat(self, context, parts: tuple) -> str:
        joined = (markup_join if context.eval_ctx.autoescape else str_join)(parts)
        return _check_result(joined, "'~'")


def _bounded_filter(name: str, func: Callable) -> Callable:
    """A filter that refuses huge size arguments (center(10**9), batch(10**9)...) and huge results."""
    skip = 2 if hasattr(func, "jinja_pass_arg") else 1  # (context/env, value, ...) or (value, ...)
    what = f"filter '{name}'"

    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        _check_ints([*args[skip:], *kwargs.values()], what)
        if name == "format" and len(args) > skip - 1:
            _check_format_spec(args[skip - 1], what)
        return _check_result(func(*args, **kwargs), what)

    return bounded


_ENV = _BoundedSandbox(
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


@contextmanager
def _time_limit(seconds: float) -> Iterator[None]:
    """Raise RenderTimeout in the main thread after `seconds` (re-raised every 0.25 s in case template
    code swallowed it). A no-op in other threads or when another ITIMER_REAL timer is armed."""
    if (seconds <= 0 or threading.current_thread() is not threading.main_thread()
            or signal.getitimer(signal.ITIMER_REAL)[0] > 0):
        yield
        return

    def on_alarm(signum, frame) -> None:
        raise RenderTimeout(seconds)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds, 0.25)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _bounded_join(pieces: Iterator[str], where: str) -> str:
    out, total = [], 0
    for piece in pieces:
        total += len(piece)
        if total > MAX_OUTPUT:
            raise TemplateLimit(f"{where} renders more than {MAX_OUTPUT:,} characters")
        out.append(piece)
    return "".join(out)


def render(t: Template, variables: Mapping) -> list[dict]:
    """Render to chat messages; empty system parts are dropped. Bounded in size and time (see top)."""
    try:
        with _time_limit(RENDER_TIME_LIMIT_S):
            return _render(t, variables)
    except RenderTimeout:
        raise ReconError(f"template {t.id}: rendering took longer than {RENDER_TIME_LIMIT_S:g} s; "
                         "simplify its loops") from None
    except MemoryError:
        raise ReconError(f"template {t.id}: ran out of memory while rendering; "
                         "it builds too large a value") from None


def _render(t: Template, variables: Mapping) -> list[dict]:
    messages = []
    for role, text in t.parts:
        try:
            if text.startswith(BLOCK):
                compiled = _compile(text[len(BLOCK):], str(t.path))
                context = compiled.new_context(dict(variables))
                content = _bounded_join(compiled.blocks[role](context), f"block '{role}'").strip()
            else:
                compiled = _compile(text, str(t.path))
                content = _bounded_join(compiled.root_render_func(compiled.new_context(dict(variables))),
                                        f"part '{role}'").strip()
        except jinja2.UndefinedError as err:
            raise ReconError(f"template {t.id}: {err.message}; the record provides: "
                             f"{', '.join(sorted(variables)) or 'nothing'}") from None
        except TemplateLimit as err:
            raise ReconError(f"template {t.id}: refused, over a sandbox limit: {err}") from None
        except SecurityError as err:
            raise ReconError(f"template {t.id}: refused unsafe access ({err})") from None
        except (jinja2.TemplateError, ArithmeticError, LookupError, TypeError, ValueError) as err:
            raise ReconError(f"template {t.id}: {type(err).__name__}: {err}") from None
        if content or role == "user":
            messages.append({"role": role, "content": content})
    return messages
