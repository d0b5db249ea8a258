"""Scorer implementations; `recon_data.score` is the registry that dispatches to them by config `type`.

Each module exposes `score(rows, *, name, **params) -> list[dict]` (one {score, label?, detail?} per row)
and a `VERSION` string. Modules are imported lazily by the registry; importing this package is cheap.
"""
