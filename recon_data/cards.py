"""Dataset cards: render a Hugging Face dataset README.md (YAML header + body) for one store version.

Every number in a card is computed here from the version's manifest or from its Parquet files (DuckDB
over the files the manifest lists); the Jinja template in `data_cards/` only lays them out. The YAML
header is built as a dict and written with `yaml.safe_dump`, then parsed back and compared, so no value
from the data (a suite name, a template id, a completion) can change the header's keys. Templates render
in jinja2's sandbox. The card is a pure function of the version and the template files it names: no
clock, no randomness, so publishing an unchanged version gives byte-identical bytes.

This module must not upload anything or write into the store; it only reads.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jinja2
import yaml
from jinja2.sandbox import SandboxedEnvironment, SecurityError

from .errors import ReconError
from .store import Store

DEFAULT_TEMPLATE = "dataset_card.md.jinja"
HUB_SPLIT = "train"
HUB_DATA_DIR = "data"
MAX_DISTINCT = 20  # rows shown per value table before "... and N more"
EXAMPLE_CHARS = 800
SIZE_CATEGORIES = [
    (1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
    (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"), (1_000_000_000, "100M<n<1B"),
    (10_000_000_000, "1B<n<10B"), (100_000_000_000, "10B<n<100B"), (1_000_000_000_000, "100B<n<1T"),
]
SECRET_KEY = re.compile(r"(?i)(token|secret|passw|api[_-]?key|authorization|credential|cookie)")
SECRET_VALUE = re.compile(r"\b(hf_[A-Za-z0-9]{16,}|sk-[A-Za-z0-9_-]{16,})")
TEMPLATE_ID = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


def card_template_dir() -> Path:
    """The `data_cards/` folder (shipped inside the wheel as recon_data/_data_cards)."""
    packaged = Path(__file__).parent / "_data_cards"
    return packaged if packaged.is_dir() else Path(__file__).resolve().parent.parent / "data_cards"


def shard_paths(n: int) -> list[str]:
    """The Hub's Parquet layout: data/train-00000-of-00003.parquet ..."""
    return [f"{HUB_DATA_DIR}/{HUB_SPLIT}-{i:05d}-of-{n:05d}.parquet" for i in range(n)]


def size_category(rows: int) -> str:
    for bound, label in SIZE_CATEGORIES:
        if rows < bound:
            return label
    return "n>1T"


# ---- small helpers ----------------------------------------------------------------------------------
def _q(column: str) -> str:
    return '"' + column.replace('"', '""') + '"'


def _lit(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def redact(value: Any) -> Any:
    """Drop anything that looks like a credential from config dicts shown in a public card."""
    if isinstance(value, dict):
        return {k: ("<redacted>" if SECRET_KEY.search(str(k)) and v not in (None, "", [], {}) else redact(v))
                for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [redact(v) for v in value]
    if isinstance(value, str):
        return SECRET_VALUE.sub("<redacted>", value)
    return value


def _tag(text: str) -> str:
    return re.sub(r"[^a-z0-9._-]+", "-", str(text).lower()).strip("-._")[:64]


def _pct(n: int | float, total: int | float) -> str:
    return f"{100.0 * n / total:.1f}%" if total else "n/a"


def _num(x: Any, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) < 1e15):
        return str(int(x))
    return f"{x:.{digits}g}" if abs(x) >= 1e4 or abs(x) < 1e-3 else f"{x:.{digits}f}"


def md_cell(value: Any) -> str:
    """A value safe inside one Markdown table cell: no pipes, newlines or raw HTML."""
    text = "" if value is None else str(value)
    text = text.replace("\\", "\\\\").replace("|", "\\|").replace("<", "&lt;").replace(">", "&gt;")
    text = re.sub(r"\r\n|\r|\n", " ⏎ ", text)
    return text.replace("`", "\\`").strip() or " "


def md_code(value: Any) -> str:
    """Inline code whose backtick fence is longer than any run inside (CommonMark), one line."""
    text = re.sub(r"[\r\n]+", " ⏎ ", "" if value is None else str(value))
    run = max((len(m) for m in re.findall(r"`+", text)), default=0)
    fence = "`" * (run + 1)
    pad = " " if text.startswith("`") or text.endswith("`") or not text else ""
    return f"{fence}{pad}{text}{pad}{fence}".replace("|", "\\|")


def md_fence(value: Any, lang: str = "") -> str:
    """A fenced block that no content can close early: the fence is longer than any backtick run."""
    text = "" if value is None else str(value)
    run = max((len(m) for m in re.findall(r"`{3,}|~{3,}", text)), default=0)
    fence = "`" * max(3, run + 1)
    return f"{fence}{lang}\n{text.rstrip()}\n{fence}"


def _truncate(text: str | None, limit: int = EXAMPLE_CHARS) -> str:
    text = text or ""
    return text if len(text) <= limit else text[:limit] + f"\n… [{len(text) - limit} more characters]"


def yaml_block(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=True, allow_unicode=True, default_flow_style=False, width=100).rstrip()


# ---- statistics from the data -----------------------------------------------------------------------
class _Data:
    """DuckDB over the version's Parquet files, with helpers that tolerate missing columns."""

    def __init__(self, files: list[Path]) -> None:
        import duckdb

        self.con = duckdb.connect()
        self.con.execute("SET threads TO 2")
        listed = ", ".join(_lit(str(f)) for f in files)
        try:
            self.con.execute(f"CREATE VIEW d AS SELECT * FROM read_parquet([{listed}])")
        except duckdb.Error as err:
            self.con.close()
            first = str(err).strip().splitlines()[0]
            raise ReconError(f"cannot read the version's Parquet files ({first}); "
                             "run `recon datasets verify`") from None
        self.columns = [r[0] for r in self.con.execute("DESCRIBE d").fetchall()]
        self.rows = self.con.execute("SELECT count(*) FROM d").fetchone()[0]

    def has(self, *cols: str) -> bool:
        return all(c in self.columns for c in cols)

    def counts(self, *cols: str) -> list[dict]:
        present = [c for c in cols if self.has(c)]
        if not present:
            return []
        sel = ", ".join(f"CAST({_q(c)} AS VARCHAR)" for c in present)
        order = ", ".join(str(i + 1) for i in range(len(present)))
        res = self.con.execute(f"SELECT {sel}, count(*) AS n FROM d GROUP BY ALL ORDER BY n DESC, {order}").fetchall()
        out = []
        for *values, n in res:
            row = dict.fromkeys(cols) | dict(zip(present, values, strict=True))  # absent columns read as None
            row.update(n=n, pct=_pct(n, self.rows))
            out.append(row)
        return out

    def numeric(self, col: str, by: str | None = None) -> list[dict]:
        c = f"TRY_CAST({_q(col)} AS DOUBLE)"
        group = f"CAST({_q(by)} AS VARCHAR)" if by else "NULL"
        res = self.con.execute(
            f"SELECT {group} AS g, count({c}), count(*) - count({c}), avg({c}), stddev_samp({c}), min({c}), "
            f"median({c}), max({c}) FROM d GROUP BY g ORDER BY g NULLS FIRST").fetchall()
        keys = ("group", "n", "missing", "mean", "std", "min", "median", "max")
        return [{k: (_num(v) if k in ("mean", "std", "min", "median", "max") else v)
                 for k, v in zip(keys, r, strict=True)} for r in res]

    def close(self) -> None:
        self.con.close()


def _limited(rows: list[dict]) -> tuple[list[dict], int]:
    return rows[:MAX_DISTINCT], max(0, len(rows) - MAX_DISTINCT)


def _template_entries(data: _Data, manifest: dict, template_dirs: Sequence[Path | str]) -> list[dict]:
    """Every (role, template id, hash) with its row count and, when the file still matches, its source."""
    entries: dict[tuple[str, str, str], dict] = {}
    for role, prefix in (("generation", "gen"), ("training", "train")):
        for r in data.counts(f"{prefix}_template_id", f"{prefix}_template_hash"):
            tid, thash = r.get(f"{prefix}_template_id"), r.get(f"{prefix}_template_hash")
            if tid is None:
                continue
            entries[(role, tid, thash or "")] = {"role": role, "id": tid, "sha256": thash or "", "rows": r["n"]}
    used = {e["id"] for e in entries.values()}
    for tid, thash in sorted((manifest.get("templates") or {}).items()):
        if tid not in used:  # a template the manifest names but no row column carries (e.g. eval templates)
            entries[("listed", tid, str(thash))] = {"role": "listed in manifest", "id": tid, "sha256": str(thash),
                                                    "rows": None}
    for e in entries.values():
        e.update(_template_source(e["id"], e["sha256"], template_dirs))
    return list(entries.values())


def _template_source(tid: str, sha: str, template_dirs: Sequence[Path | str]) -> dict:
    from .templates import load_template

    if not TEMPLATE_ID.match(tid) or ".." in tid:
        return {"source": None, "source_note": "the id is not of the form suite/stance/name"}
    dirs = [d for d in template_dirs if Path(d).is_dir()]
    try:
        t = load_template(tid, dirs)
    except (ReconError, OSError, ValueError):
        return {"source": None, "source_note": "template file not found here (a user template dir that is gone?); "
                                               "only its id and sha256 are known"}
    if sha and t.sha256 != sha:
        return {"source": None, "source_note": f"the template file now has sha256 {t.sha256}, not the recorded "
                                               "one: it changed after this dataset was built, so it is not shown"}
    return {"source": t.source, "source_note": None, "stance": t.stance}


def _stats(stats: Any) -> list[dict]:
    """Normalise manifest stats (a list of stage dicts, or a dict of them) to table rows."""
    if isinstance(stats, dict):
        stats = [({"stage": k, **v} if isinstance(v, dict) else {"stage": k, "value": v}) for k, v in stats.items()]
    out = []
    for s in stats or []:
        if not isinstance(s, dict):
            continue
        stage = s.get("stage") or s.get("filter") or s.get("name") or "?"
        kind = "filter" if "filter" in s and "stage" not in s else "stage"
        rin, rout = s.get("rows_in"), s.get("rows_out")
        detail = {k: v for k, v in s.items() if k not in ("stage", "filter", "name", "rows_in", "rows_out", "reason")}
        out.append({
            "kind": kind, "stage": stage, "rows_in": rin, "rows_out": rout,
            "kept": _pct(rout, rin) if isinstance(rin, int) and isinstance(rout, int) and rout <= rin else "",
            "reason": s.get("reason") or "", "detail": json.dumps(redact(detail), sort_keys=True) if detail else "",
        })
    return out


def _lineage(store: Store, manifest: dict, depth: int = 20) -> list[dict]:
    """Walk parent versions in this store (breadth first, each once); unknown parents are listed as such."""
    out, seen, queue = [], set(), [(p, 1) for p in manifest.get("parents") or []]
    while queue and len(out) < 50:
        ref, level = queue.pop(0)
        if ref in seen or level > depth:
            continue
        seen.add(ref)
        try:
            m = store.manifest(ref)
        except ReconError:
            out.append({"ref": ref, "level": level, "rows": None, "created_at": None, "parents": [], "found": False,
                        "round": None})
            continue
        parents = list(m.get("parents") or [])
        out.append({"ref": ref, "level": level, "rows": m.get("rows"), "created_at": m.get("created_at"),
                    "parents": parents, "found": True, "round": (m.get("extra") or {}).get("round")})
        queue += [(p, level + 1) for p in parents]
    return out


def _examples(data: _Data, label_cols: list[str]) -> list[dict]:
    """One short example per label value of the first label column (the first row by id)."""
    if not label_cols or not data.has("completion"):
        return []
    col = label_cols[0]
    msgs = "prompt" if data.has("prompt") else ("gen_messages" if data.has("gen_messages") else None)
    order = ", ".join(_q(c) for c in ("id", "seed", "sample_index") if data.has(c)) or "completion"
    out = []
    for r in data.counts(col)[:6]:
        value = r[col]
        where = f"CAST({_q(col)} AS VARCHAR) = ?" if value is not None else f"{_q(col)} IS NULL"
        sel = ", ".join([_q("completion"), _q(msgs) if msgs else "NULL",
                         _q("arm") if data.has("arm") else "NULL", _q("id") if data.has("id") else "NULL"])
        row = data.con.execute(f"SELECT {sel} FROM d WHERE {where} ORDER BY {order} LIMIT 1",
                               [value] if value is not None else []).fetchone()
        if row is None:
            continue
        completion, messages, arm, rid = row
        prompt = "\n\n".join(f"[{m.get('role')}] {m.get('content')}" for m in (messages or []) if isinstance(m, dict))
        out.append({"column": col, "label": value, "id": rid, "arm": arm, "prompt_field": msgs,
                    "prompt": _truncate(prompt), "completion": _truncate(completion)})
    return out


def card_context(store: Store, ref: str, *, template_dirs: Sequence[Path | str] = ()) -> dict:
    """Everything a card shows, computed from the manifest and the data (no typed numbers)."""
    vref = store.resolve(ref)
    manifest = store.manifest(str(vref))
    pipeline = manifest.get("pipeline") if isinstance(manifest.get("pipeline"), dict) else None
    listed = (pipeline or {}).get("templates_dirs")
    dirs = [*template_dirs, *(d for d in (listed if isinstance(listed, list) else []) if isinstance(d, str))]
    data = _Data(store.local_files(str(vref)))
    try:
        label_cols = sorted(c for c in data.columns if c.startswith("label."))
        score_cols = sorted(c for c in data.columns if c.startswith("score."))
        scorers = []
        for name in sorted({c.split(".", 1)[1] for c in label_cols + score_cols}):
            lab, sc, ver = f"label.{name}", f"score.{name}", f"scorer_version.{name}"
            labels, more = _limited(data.counts(lab)) if data.has(lab) else ([], 0)
            scorers.append({
                "name": name,
                "label_column": lab if data.has(lab) else None,
                "labels": [{"value": r[lab], "n": r["n"], "pct": r["pct"]} for r in labels],
                "labels_more": more,
                "labels_by_arm": data.counts("arm", lab) if data.has(lab, "arm") and not more else [],
                "score_column": sc if data.has(sc) else None,
                "score": data.numeric(sc)[0] if data.has(sc) else None,
                "score_by_arm": data.numeric(sc, "arm") if data.has(sc, "arm") else [],
                "versions": [r[ver] for r in data.counts(ver)] if data.has(ver) else [],
            })
        sampling = []
        for r in data.counts("sampling_params"):
            try:
                params = json.loads(r["sampling_params"]) if r["sampling_params"] else {}
            except (json.JSONDecodeError, TypeError):
                params = {"raw": r["sampling_params"]}
            shown = ", ".join(f"{k}={v}" for k, v in sorted(params.items())) if isinstance(params, dict) \
                else str(params)
            sampling.append({"params": shown, "n": r["n"], "pct": r["pct"]})
        files = manifest.get("files") or []
        ctx = {
            "name": vref.name,
            "version": vref.version,
            "ref": str(vref),
            "pretty_name": vref.name,
            "created_at": manifest.get("created_at"),
            "recon_version": manifest.get("recon_data_version"),
            "rows": data.rows,
            "bytes": sum(int(f.get("bytes") or 0) for f in files),
            "schema": manifest.get("schema") or [],
            "columns": data.columns,
            "files": [{"path": p, "rows": f.get("rows"), "bytes": f.get("bytes"), "sha256": f.get("sha256")}
                      for p, f in zip(shard_paths(len(files)), files, strict=True)],
            "suites": data.counts("suite"),
            "splits": data.counts("split"),
            "arms": data.counts("arm"),
            "rounds": data.counts("round"),
            "arm_templates": data.counts("arm", "gen_template_id", "train_template_id")
            if data.has("arm", "gen_template_id", "train_template_id") else [],
            "recontextualized_rows": _recontextualized_rows(data),
            "templates": _template_entries(data, manifest, dirs),
            "manifest_models": [redact({k: v for k, v in m.items()}) for m in manifest.get("models") or []
                                if isinstance(m, dict)],
            "models": data.counts("model_id", "model_revision", "backend"),
            "sampling": sampling,
            "finish_reasons": data.counts("finish_reason"),
            "completion_tokens": data.numeric("completion_tokens")[0] if data.has("completion_tokens") else None,
            "prompt_tokens": data.numeric("prompt_tokens")[0] if data.has("prompt_tokens") else None,
            "scorers": scorers,
            "stats": _stats(manifest.get("stats")),
            "parents": list(manifest.get("parents") or []),
            "lineage": _lineage(store, manifest),
            "extra": redact(manifest.get("extra") or {}),
            "pipeline_yaml": yaml_block(redact(pipeline)) if pipeline else None,
            "examples": _examples(data, label_cols),
            "has_messages": data.has("prompt") or data.has("gen_messages"),
        }
    finally:
        data.close()
    return ctx


def _recontextualized_rows(data: _Data) -> int | None:
    if not data.has("gen_template_id", "train_template_id"):
        return None
    return data.con.execute(
        'SELECT count(*) FROM d WHERE "gen_template_id" IS DISTINCT FROM "train_template_id"').fetchone()[0]


def card_metadata(ctx: dict, *, license: str | None = None) -> dict:
    """The YAML header the Hub reads (license, task, size, tags, configs → the published Parquet layout)."""
    extra = ctx.get("extra") or {}
    tags = ["recontextualization", "recon-data", "synthetic"]
    tags += [t for t in (_tag(s["suite"]) for s in ctx["suites"] if s.get("suite")) if t and t not in tags]
    language = extra.get("language") if isinstance(extra.get("language"), str) else "en"
    return {
        "pretty_name": ctx["pretty_name"],
        "license": license or (extra.get("license") if isinstance(extra.get("license"), str) else None) or "other",
        "language": [language],
        "task_categories": ["text-generation"],
        "size_categories": [size_category(ctx["rows"])],
        "tags": tags[:30],
        "configs": [{"config_name": "default",
                     "data_files": [{"split": HUB_SPLIT, "path": f"{HUB_DATA_DIR}/{HUB_SPLIT}-*"}]}],
    }


def _env(search: list[Path]) -> SandboxedEnvironment:
    env = SandboxedEnvironment(
        loader=jinja2.FileSystemLoader([str(p) for p in search]), undefined=jinja2.StrictUndefined,
        autoescape=False, trim_blocks=True, lstrip_blocks=True, keep_trailing_newline=True,
    )
    env.filters.update(cell=md_cell, code=md_code, fence=md_fence, num=_num, pct=_pct,
                       yaml_block=yaml_block)
    return env


def split_header(card: str) -> tuple[dict, str]:
    """(metadata, body) of a README; ReconError when the header is missing or not a mapping."""
    m = re.match(r"\A---\n(.*?)\n---\n(.*)\Z", card, re.S)
    if not m:
        raise ReconError("the card has no YAML header (--- ... ---) at its top: check the card template")
    try:
        meta = yaml.safe_load(m.group(1))
    except yaml.YAMLError as err:
        raise ReconError(f"the card's YAML header does not parse: {str(err).splitlines()[0]}") from None
    if not isinstance(meta, dict):
        raise ReconError("the card's YAML header is not a mapping: check the card template")
    return meta, m.group(2)


def render_card(store: Store, ref: str, *, license: str | None = None, template: Path | str | None = None,
                template_dirs: Sequence[Path | str] = ()) -> str:
    """The README.md (YAML header + Markdown body) for one version; `template` overrides the built-in."""
    ctx = card_context(store, ref, template_dirs=template_dirs)
    meta = card_metadata(ctx, license=license)
    header = yaml.safe_dump(meta, sort_keys=False, allow_unicode=True, default_flow_style=False, width=10**9)
    search, name = [card_template_dir()], DEFAULT_TEMPLATE
    if template is not None:
        tpath = Path(template)
        if not tpath.is_file():
            raise ReconError(f"card template not found: {tpath}")
        search, name = [tpath.parent.resolve(), card_template_dir()], tpath.name
    try:
        card = _env(search).get_template(name).render(metadata_yaml=header.rstrip("\n"), meta=meta,
                                                      max_rows=MAX_DISTINCT, **ctx)
    except jinja2.TemplateSyntaxError as err:
        raise ReconError(f"card template {err.filename or name}:{err.lineno}: syntax error: {err.message}") from None
    except SecurityError as err:
        raise ReconError(f"card template {name}: refused unsafe access ({err})") from None
    except jinja2.TemplateError as err:
        raise ReconError(f"card template {name}: {type(err).__name__}: {err}") from None
    parsed, _ = split_header(card)
    if template is None and parsed != meta:  # the built-in template must carry the header verbatim
        raise RuntimeError("card header does not round-trip through YAML; this is a bug in cards.py")
    return card
