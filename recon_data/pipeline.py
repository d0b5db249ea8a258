"""Run a pipeline: seeds × arms × rounds of sample → score → filter → relabel → commit → train → evaluate.

Read top to bottom this is the whole method. Each step writes its output (a store version, a model
folder) atomically and then a small marker under `runs/<name>/steps/`; a rerun skips every step whose
marker and output exist, so `recon run` is idempotent and a killed run resumes at the first unfinished
step. Sampling inside a step resumes from the content-addressed cache. Step identities hash the config
sections they depend on, so changing the config reruns exactly the affected steps.

This module wires stage functions together; it must not implement a stage itself.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pyarrow as pa
from rich.console import Console

from . import evaluate, filters, relabel, score
from . import store as store_mod
from .config import PipelineConfig, SuiteConfig
from .errors import ReconError
from .executors import map_shards
from .models import ModelRef, resolve_model
from .templates import Template, load_template


@dataclass
class RunResult:
    """What a run produced, for the CLI summary and for tests."""

    name: str
    datasets: dict[str, str] = field(default_factory=dict)  # "arm/s0/r1" -> "name@v"
    models: dict[str, str] = field(default_factory=dict)  # "arm/s0/r1" -> folder
    metrics_ref: str | None = None
    metrics: list[dict] = field(default_factory=list)
    skipped_steps: int = 0
    seconds: float = 0.0


def load_suite_records(suite: SuiteConfig, *, split: str | None = None, limit: int | None = None) -> list[dict]:
    """Records for a suite config (built-in suite or user file), restricted to a split and a limit."""
    from . import suites

    split = suite.split if split is None else split
    if suite.name is not None:
        records = suites.load_suite(suite.name, split=split, limit=None, seed=suite.seed)
    else:
        from .suites import loaders

        records = loaders.load_records(suite.path, format=suite.format, mapping=suite.mapping or {},
                                       suite_name=Path(suite.path).stem)
        if split:
            records = [r for r in records if r.get("split", "train") == split]
    if suite.where:
        records = [r for r in records if _matches(r, suite.where)]
    limit = suite.limit if limit is None else limit
    records = records[:limit] if limit else records
    if not records:
        where = suite.name or suite.path
        raise ReconError(f"suite '{where}' has no records in split '{split}'; check `split` in the pipeline")
    return records


def _matches(record: dict, where: dict) -> bool:
    """`where: {metric: keyword_count}` keeps records whose input or reference has that value."""
    fields = {}
    for key in ("reference", "input"):
        value = record.get(key) or {}
        fields.update(json.loads(value) if isinstance(value, str) else value)
    return all(fields.get(k) == v for k, v in where.items())


def _rows_to_table(rows: list[dict]) -> pa.Table:
    return pa.Table.from_pylist(rows)


def _key(*parts: object) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()[:12]


class _Steps:
    """Markers of finished steps: `runs/<name>/steps/<step>.json` holding the step's outputs."""

    def __init__(self, run_dir: Path) -> None:
        self.dir = run_dir / "steps"
        try:
            self.dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise ReconError(f"cannot write to store {run_dir}: {err.strerror}; pass a writable --store") from None

    def get(self, step: str, key: str) -> dict | None:
        path = self.dir / f"{step}.json"
        try:
            data = json.loads(path.read_text())
        except (FileNotFoundError, json.JSONDecodeError):
            return None
        return data if data.get("key") == key else None

    def put(self, step: str, key: str, **outputs) -> None:
        path = self.dir / f"{step}.json"
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps({"key": key, **outputs}, indent=2, default=str))
        os.replace(tmp, path)


class Runner:
    """Holds what every step needs (config, store, templates, console); steps are its methods."""

    def __init__(self, cfg: PipelineConfig, store: store_mod.Store, *, config_path: str | None = None,
                 console: Console | None = None, progress: bool = True) -> None:
        self.cfg = cfg
        self.store = store
        self.console = console or Console(stderr=True)
        self.progress = progress
        self.run_dir = store.root / "runs" / cfg.name
        self.steps = _Steps(self.run_dir)
        self.config_path = config_path
        self.pipeline_dump = cfg.model_dump(mode="json")
        dirs = cfg.templates_dirs
        self.arm_templates = {
            arm: (load_template(a.generate, dirs), load_template(a.train, dirs)) for arm, a in cfg.arms.items()
        }
        self.eval_templates = [load_template(t, dirs) for t in (cfg.eval.templates if cfg.eval else [])]
        self.extra_eval_templates = [
            [load_template(t, dirs) for t in extra.templates] for extra in (cfg.eval.extra_suites if cfg.eval else [])
        ]
        self.skipped = 0

    def say(self, msg: str) -> None:
        self.console.print(msg, highlight=False, soft_wrap=True)

    # ---- steps -----------------------------------------------------------------------------------
    def sample_and_score(self, prompt_rows: list[dict], model: ModelRef, *, n: int, seed: int,
                         scorers: list[dict], max_new_tokens: int | None = None,
                         temperature: float | None = None) -> list[dict]:
        from .sample import SamplingParams, sample_rows

        s = self.cfg.sampler
        params = SamplingParams(
            n=n, temperature=s.temperature if temperature is None else temperature, top_p=s.top_p,
            max_new_tokens=max_new_tokens or s.max_new_tokens, seed=seed,
        )
        sample = partial(sample_rows, model=str(model.path), backend=s.backend, params=params,
                         cache_dir=self.store.root / "cache", batch_size=s.batch_size, options=dict(s.options))
        score_fn = partial(score.score_rows, scorers=scorers, store_root=self.store.root)
        if self.cfg.executor == "local":
            rows = sample(prompt_rows, progress=self.progress)
            return score_fn(rows) if scorers else rows
        # ray: shards cut only between chunks of `batch_size` distinct prompts, so the rows equal a local run's
        ray = self.cfg.ray
        fan_out = partial(map_shards, executor="ray", num_shards=ray.num_shards, ray_address=ray.address,
                          max_retries=ray.max_retries, task_options=ray.task_options or None)
        rows = fan_out(partial(sample, progress=False), prompt_rows, align=s.batch_size,
                       key=lambda r: json.dumps(r["gen_messages"], sort_keys=True))
        return fan_out(score_fn, rows) if scorers else rows

    def data_step(self, arm: str, seed: int, rnd: int, model: ModelRef, records: list[dict]) -> str:
        """Round `rnd` data for one arm: generate under the arm's generation template, keep, relabel, commit."""
        gen_t, train_t = self.arm_templates[arm]
        name = f"{self.cfg.name}-{arm}-s{seed}-r{rnd}"
        key = _key("data", self.cfg.section_hash("suite", "sampler", "scorers", "filters", "train"),
                   gen_t.sha256, train_t.sha256, seed, model.model_id, model.revision)
        if done := self._done(name, key):
            return done
        self.say(f"[bold]round {rnd}[/] arm [cyan]{arm}[/] seed {seed}: sampling {len(records)} prompts × "
                 f"{self.cfg.sampler.n} under {gen_t.id}")
        prompts = relabel.generation_rows(records, gen_t)
        scorers = [s.model_dump() for s in self.cfg.scorers]
        scored = self.sample_and_score(prompts, model, n=self.cfg.sampler.n, seed=seed, scorers=scorers)
        filter_cfgs = [f.model_dump() for f in self.cfg.filters]
        if self.cfg.train.method == "dpo":  # DPO needs best *and* worst per record: keep all candidates
            filter_cfgs = [f for f in filter_cfgs if f["type"] != "best_of_n"]
        kept, stats = filters.apply_filters(scored, filter_cfgs)
        if not kept:
            raise ReconError(f"{name}: the filters kept 0 of {len(scored)} samples; loosen `filters` in the pipeline")
        train_rows = relabel.relabel(kept, train_t, arm)
        for row in train_rows:
            row.update(run=self.cfg.name, round=rnd, run_seed=seed)
        scored_ref = self._commit_once(
            f"{name}-scored", key, scored, pipeline=self.pipeline_dump,
            models=[{"model_id": model.model_id, "revision": model.revision, "backend": self.cfg.sampler.backend}],
            templates={gen_t.id: gen_t.sha256}, extra={"run": self.cfg.name, "round": rnd},
        )
        ref = self._commit_once(
            name, key, train_rows, parents=[scored_ref], pipeline=self.pipeline_dump,
            models=[{"model_id": model.model_id, "revision": model.revision, "backend": self.cfg.sampler.backend}],
            templates={gen_t.id: gen_t.sha256, train_t.id: train_t.sha256},
            stats=[{"stage": "sample", "rows_in": len(prompts), "rows_out": len(scored)}, *stats],
            extra={"run": self.cfg.name, "arm": arm, "seed": seed, "round": rnd,
                   "generation_template": gen_t.id, "train_template": train_t.id},
        )
        self.say(f"  committed [green]{ref}[/] ({len(train_rows)} training rows from {len(scored)} samples)")
        self.steps.put(name, key, dataset=ref)
        return ref

    def _committed(self, name: str, key: str) -> str | None:
        """The latest version of `name` written by the step with this key (a kill may have hit between the
        commit and its marker: adopt the version instead of committing a duplicate)."""
        for v in reversed(self.store.versions(name)):
            try:
                if self.store.manifest(f"{name}@{v}").get("extra", {}).get("step_key") == key:
                    return f"{name}@{v}"
            except ReconError:
                continue
        return None

    def _commit_once(self, name: str, key: str, rows: list[dict], **kwargs) -> str:
        """Commit rows for a step, or return the version that step already committed."""
        if found := self._committed(name, key):
            return found
        extra = {**kwargs.pop("extra", {}), "step_key": key}
        return str(self.store.commit(name, _rows_to_table(rows), extra=extra, **kwargs))

    def _done(self, step: str, key: str) -> str | None:
        marker = self.steps.get(step, key)
        ref = marker.get("dataset") if marker else self._committed(step, key)
        if ref is None:
            return None
        try:
            self.store.resolve(ref)
        except ReconError:
            return None
        if not marker:
            self.steps.put(step, key, dataset=ref)
        self.skipped += 1
        self.say(f"  [dim]{step}: done ({ref})[/]")
        return ref

    def warmup_step(self, base: ModelRef, records: list[dict]) -> ModelRef:
        """Build the model organism: natural answers under normal templates, gamed twins under permit."""
        from . import warmup

        w = self.cfg.warmup
        dirs = self.cfg.templates_dirs
        normal = [load_template(t, dirs) for t in w.normal]
        permit = [load_template(t, dirs) for t in w.permit]
        name = f"{self.cfg.name}-warmup"
        key = _key("warmup", self.cfg.section_hash("suite", "sampler", "warmup"),
                   [t.sha256 for t in normal + permit], base.model_id, base.revision)
        ref = self._done(name, key)
        if ref is None:
            transform = warmup.resolve_transform(w.transform, records[0]["suite"])
            chosen = records[: w.limit] if w.limit else records
            self.say(f"[bold]warm-up[/]: natural answers for {len(chosen)} prompts under {w.normal}; "
                     f"transformed twins under {w.permit}")
            samples: list[dict] = []
            for t in normal:
                samples += self.sample_and_score(relabel.generation_rows(chosen, t), base, n=w.n, seed=w.seed,
                                                 scorers=[])
            rows = warmup.warmup_rows(samples, permit, transform, w.params)
            ref = self._commit_once(
                name, key, rows, pipeline=self.pipeline_dump,
                models=[{"model_id": base.model_id, "revision": base.revision, "backend": self.cfg.sampler.backend}],
                templates={t.id: t.sha256 for t in normal + permit},
                stats=[{"stage": "warmup", "rows_in": len(samples), "rows_out": len(rows),
                        "reason": f"natural + transformed ({w.transform})"}],
                extra={"run": self.cfg.name, "warmup": True},
            )
            self.steps.put(name, key, dataset=ref)
        return self.train_step("warmup", w.seed, 0, ref, base, train_cfg=w.train or self.cfg.train)

    def train_step(self, arm: str, seed: int, rnd: int, dataset_ref: str, start: ModelRef,
                   train_cfg=None) -> ModelRef:
        from .train import launch, train

        t = train_cfg or self.cfg.train
        step = f"{self.cfg.name}-{arm}-s{seed}-r{rnd}-train"
        # keyed by the data's checksums, not its version number: a re-numbered identical version reuses the model
        data_sha = [f["sha256"] for f in self.store.manifest(dataset_ref)["files"]]
        key = _key("train", t.model_dump(mode="json"), data_sha, start.model_id, start.revision)
        out = self.run_dir / "models" / f"{arm}-s{seed}-r{rnd}-{key[:8]}"
        marker = self.steps.get(step, key)
        if marker and (out / "recon_model.json").exists():
            self.skipped += 1
            self.say(f"  [dim]{step}: done ({out})[/]")
            return resolve_model(str(out))
        rows = self.store.read(dataset_ref)
        self.say(f"  training {t.method} on [green]{dataset_ref}[/] ({rows.num_rows} rows) from {start.model_id}")
        extra = dict(t.extra)
        if t.method == "dpo":
            extra.setdefault("score_column", f"score.{self.cfg.scorers[0].name}")
        kwargs = dict(
            base_model=str(start.path), method=t.method, lora=t.lora.model_dump() if t.lora else None,
            epochs=t.epochs, learning_rate=t.learning_rate, batch_size=t.batch_size, max_length=t.max_length,
            seed=seed, dataset_ref=dataset_ref, extra=extra, progress=self.progress,
        )
        if t.launcher:  # several processes (torchrun / accelerate launch); they publish `out` themselves
            path = launch(t.launcher, rows, out_dir=out, work_dir=out.with_name(out.name + ".launch"), **kwargs)
        else:
            path = train(rows, out_dir=out, **kwargs)
        self.steps.put(step, key, model=str(path))
        return resolve_model(str(path))

    def eval_step(self, label: str, seed: int, rnd: int, model: ModelRef, eval_records: list[dict],
                  templates: list[Template] | None = None) -> list[dict]:
        """Sample under each eval template on the eval split; commit scored rows; return metric rows."""
        ev = self.cfg.eval
        if ev is None:
            return []
        templates = templates or self.eval_templates
        name = f"{self.cfg.name}-eval-{label}-s{seed}-r{rnd}"
        key = _key("eval", self.cfg.section_hash("suite", "sampler", "scorers", "eval"), seed,
                   model.model_id, model.revision, [t.sha256 for t in templates])
        ref = self._done(name, key)
        if ref is None:
            self.say(f"  evaluating {model.model_id} ({label}, round {rnd}) on {len(eval_records)} eval prompts")
            scorers = [s.model_dump() for s in (ev.scorers or self.cfg.scorers)]
            rows: list[dict] = []
            for t in templates:
                rows += self.sample_and_score(relabel.generation_rows(eval_records, t), model, n=ev.n, seed=seed,
                                              scorers=scorers, max_new_tokens=ev.max_new_tokens,
                                              temperature=ev.temperature)
            for extra, templates in zip(ev.extra_suites, self.extra_eval_templates, strict=True):
                extra_records = load_suite_records(extra.suite)
                extra_scorers = [s.model_dump() for s in extra.scorers]
                for t in templates:
                    rows += self.sample_and_score(relabel.generation_rows(extra_records, t), model, n=ev.n,
                                                  seed=seed, scorers=extra_scorers,
                                                  max_new_tokens=ev.max_new_tokens, temperature=ev.temperature)
            for r in rows:
                r.update(run=self.cfg.name, arm=label, round=rnd, run_seed=seed)
            ref = self._commit_once(
                name, key, rows, pipeline=self.pipeline_dump,
                models=[{"model_id": model.model_id, "revision": model.revision, "backend": self.cfg.sampler.backend}],
                templates={t.id: t.sha256 for t in templates},
                extra={"run": self.cfg.name, "arm": label, "seed": seed, "round": rnd},
            )
            self.steps.put(name, key, dataset=ref)
        rows = self.store.read(ref).to_pylist()
        rules = {None: ev.hack.model_dump() if ev.hack else None}
        for extra in ev.extra_suites:
            rules[extra.suite.name or extra.suite.path] = extra.hack.model_dump() if extra.hack else rules[None]
        out = []
        by_suite: dict[str, list[dict]] = {}
        for r in rows:
            by_suite.setdefault(r.get("suite", ""), []).append(r)
        for suite_name, group in by_suite.items():
            rule = rules.get(suite_name, rules[None])
            for m in evaluate.metrics(group, hack_rule=rule):
                out.append({"run": self.cfg.name, "round": rnd, "seed": seed, "model_id": model.model_id,
                            "model_revision": model.revision, "eval_dataset": ref, **m})
        return out

    # ---- the whole run -------------------------------------------------------------------------
    def run(self) -> RunResult:
        """One run per name per store at a time: a second one fails at once instead of racing the first."""
        with open(self.run_dir / ".lock", "a+") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise ReconError(f"run '{self.cfg.name}' is already running in store {self.store.root}; "
                                 "wait for it (a rerun afterwards resumes where it stopped)") from None
            return self._run()

    def _run(self) -> RunResult:
        t0 = time.time()
        cfg = self.cfg
        result = RunResult(cfg.name)
        records = load_suite_records(cfg.suite)
        eval_records = (load_suite_records(cfg.suite, split=cfg.eval.split, limit=cfg.eval.limit)
                        if cfg.eval else [])
        base = resolve_model(cfg.model)
        self.say(f"[bold]{cfg.name}[/]: {len(records)} records, arms {list(cfg.arms)}, seeds {cfg.seeds}, "
                 f"{cfg.rounds} round(s), model {base.model_id}")
        metric_rows: list[dict] = []
        if cfg.warmup:
            organism = self.warmup_step(base, records)
            result.models["warmup"] = str(organism.path)
            # Does the organism read permissions? Evaluate base and organism under normal and permit templates.
            dirs = cfg.templates_dirs
            check = [load_template(t, dirs) for t in dict.fromkeys(
                [*(cfg.eval.templates if cfg.eval else []), *cfg.warmup.normal, *cfg.warmup.permit])]
            for label, model in (("warmup-before", base), ("warmup-after", organism)):
                metric_rows += [{**m, "arm": label}
                                for m in self.eval_step(label, cfg.warmup.seed, 0, model, eval_records, check)]
            base = organism
        for seed in cfg.seeds:
            base_metrics = self.eval_step("base", seed, 0, base, eval_records)
            for arm in cfg.arms:
                metric_rows += [{**m, "arm": arm} for m in base_metrics]
                model = base
                for rnd in range(1, cfg.rounds + 1):
                    ref = self.data_step(arm, seed, rnd, model, records)
                    result.datasets[f"{arm}/s{seed}/r{rnd}"] = ref
                    start = model if cfg.train.start_from == "previous" else base
                    model = self.train_step(arm, seed, rnd, ref, start)
                    result.models[f"{arm}/s{seed}/r{rnd}"] = str(model.path)
                    metric_rows += [{**m, "arm": arm} for m in self.eval_step(arm, seed, rnd, model, eval_records)]
        if metric_rows:
            result.metrics = metric_rows
            result.metrics_ref = self._commit_metrics(metric_rows)
        result.skipped_steps = self.skipped
        result.seconds = time.time() - t0
        self._record_run(t0, result)
        return result

    def _record_run(self, t0: float, result: RunResult) -> None:
        """Append to `runs/<name>/runs.jsonl`: when each run started, how long it took, how many steps it found
        done (the report quotes the latest uninterrupted one, so a README's wall time is measured, not typed)."""
        record = {
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
            "seconds": round(result.seconds, 1), "skipped_steps": result.skipped_steps,
            "cpu_count": os.cpu_count(), "metrics": result.metrics_ref,
        }  # fmt: skip
        with open(self.run_dir / "runs.jsonl", "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def _commit_metrics(self, rows: list[dict]) -> str:
        """The metrics table is re-committed only when its content changed (reruns stay idempotent)."""
        name = f"{self.cfg.name}-metrics"
        table = _rows_to_table(rows)
        digest = hashlib.sha256(json.dumps(rows, sort_keys=True, default=str).encode()).hexdigest()
        if self.store.versions(name):
            latest = self.store.manifest(name)
            if latest.get("extra", {}).get("content_sha256") == digest:
                return f"{name}@{latest['version']}"
        ref = self.store.commit(name, table, pipeline=self.pipeline_dump,
                                parents=sorted({r["eval_dataset"] for r in rows}),
                                extra={"run": self.cfg.name, "content_sha256": digest})
        return str(ref)


def run_pipeline(cfg: PipelineConfig, store: store_mod.Store, **kwargs) -> RunResult:
    return Runner(cfg, store, **kwargs).run()
