"""Predicting the five fitted parameters of a layer's curve from architecture features (METHODS.md section 3).

Features of layer ``l`` (1-based) of a member with ``L`` layers: relative depth ``l/L`` and its square and cube,
``heads/d_model``, ``d_mlp/d_model``, ``d_model/L``, ``heads/L``, ``log d_model``, ``l*L``. Targets are
log-transformed: ``log`` of ``lambda``, ``gamma``, ``t0`` (positive; a small floor keeps ``lambda = 0`` finite) and the
signed ``sign(v) log(1 + |v|)`` of ``A`` and ``K``. Ridge (standardised features), random forest and gradient boosting
are scored by leave-one-model-out cross-validation: every member's layers are predicted by a model fitted on the other
members only, and R^2 is computed over the pooled held-out predictions. Scores are reported as measured (they are
often poor with a handful of members).
"""

from __future__ import annotations

import numpy as np
import pandas as pd

FEATURES = ("rel_depth", "rel_depth2", "rel_depth3", "heads_per_d", "mlp_ratio", "d_per_layer", "heads_per_layer",
            "log_d_model", "l_times_L")
TARGETS = ("A", "lam", "gamma", "t0", "K")
MIN_MEMBERS = 3


def layer_features(d_model: int, n_layers: int, n_heads: int, d_mlp: int, layer: int) -> dict[str, float]:
    """The feature vector of 0-based ``layer`` of a member (see the module docstring)."""
    rel = (layer + 1) / n_layers
    return {
        "rel_depth": rel, "rel_depth2": rel**2, "rel_depth3": rel**3, "heads_per_d": n_heads / d_model,
        "mlp_ratio": d_mlp / d_model, "d_per_layer": d_model / n_layers, "heads_per_layer": n_heads / n_layers,
        "log_d_model": float(np.log(d_model)), "l_times_L": float((layer + 1) * n_layers),
    }


def transform_targets(fits: pd.DataFrame) -> pd.DataFrame:
    """The log-transformed targets of ``fits`` (columns ``A, lam, gamma, t0, K``)."""
    out = pd.DataFrame(index=fits.index)
    for col in ("lam", "gamma", "t0"):
        out[col] = np.log(np.maximum(fits[col].astype(float), 1e-6))
    for col in ("A", "K"):
        out[col] = np.sign(fits[col]) * np.log1p(np.abs(fits[col].astype(float)))
    return out[list(TARGETS)]


def _models() -> dict:
    from sklearn.ensemble import GradientBoostingRegressor, RandomForestRegressor
    from sklearn.linear_model import Ridge
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return {
        "ridge": lambda: make_pipeline(StandardScaler(), Ridge(alpha=1.0)),
        "random_forest": lambda: RandomForestRegressor(n_estimators=50, random_state=0),
        "gradient_boosting": lambda: GradientBoostingRegressor(random_state=0),
    }


def predictor_scores(fits: pd.DataFrame, configs: dict[str, dict],
                     models: tuple[str, ...] = ("ridge", "random_forest", "gradient_boosting")) -> pd.DataFrame:
    """Leave-one-model-out R^2 of each model for each target parameter.

    ``fits``: rows per (member, layer) with columns ``member, layer, A, lam, gamma, t0, K`` (from
    :func:`probes.dynamics.fit_table`); ``configs``: member -> config dict with ``d_model, n_layers, n_heads, d_mlp``.
    ``models`` picks among ``ridge``, ``random_forest``, ``gradient_boosting``.
    Returns rows ``model, target, r2_lomo, n_layers_total, n_members``. Needs at least three members (ValueError).
    """
    from sklearn.metrics import r2_score

    available = _models()
    unknown = [m for m in models if m not in available]
    if unknown:
        raise ValueError(f"unknown predictor model(s) {unknown}; accepted: {', '.join(available)}")
    members = sorted(fits["member"].unique())
    if len(members) < MIN_MEMBERS:
        raise ValueError(f"the predictor needs layers of at least {MIN_MEMBERS} members, got {len(members)}: {members}")
    X = pd.DataFrame([
        layer_features(int(configs[m]["d_model"]), int(configs[m]["n_layers"]), int(configs[m]["n_heads"]),
                       int(configs[m]["d_mlp"]), int(layer))
        for m, layer in zip(fits["member"], fits["layer"], strict=True)
    ])[list(FEATURES)].to_numpy()
    Y = transform_targets(fits).to_numpy()
    groups = fits["member"].to_numpy()
    rows = []
    for model_name in models:
        make = available[model_name]
        for j, target in enumerate(TARGETS):
            pred = np.empty(len(Y))
            for held in members:
                test = groups == held
                model = make().fit(X[~test], Y[~test, j])
                pred[test] = model.predict(X[test])
            rows.append({"model": model_name, "target": target, "r2_lomo": float(r2_score(Y[:, j], pred)),
                         "n_layers_total": len(Y), "n_members": len(members)})
    return pd.DataFrame(rows)
