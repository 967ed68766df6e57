#!/usr/bin/env python3
"""Writes tests/data/ocsvm_reference.json: scikit-learn OneClassSVM decisions
that tests/sklearn_agreement.rs compares vmwatch's one-class SVM with.

Not needed by CI (the JSON is committed). Regenerate with:
    pip install scikit-learn numpy && python3 scripts/sklearn_reference.py
The inputs are already scaled (vmwatch's scaler is tested on its own), so
both SVMs see identical numbers.
"""
import json
import pathlib

import numpy as np
import sklearn
from sklearn.svm import OneClassSVM

rng = np.random.default_rng(20261125)
cases = []
for dims, nu, gamma in [(2, 0.05, 0.5), (5, 0.1, 0.1), (5, 0.01, 0.05), (20, 0.05, 0.02)]:
    # Normal windows: a correlated Gaussian cloud with a second mode.
    n = 300
    base = rng.normal(size=(n, dims))
    base[: n // 3] += 2.0
    mix = rng.normal(size=(dims, dims)) * 0.3 + np.eye(dims)
    train = base @ mix
    # Test points: normal ones, and points pushed out at several distances.
    test_normal = (rng.normal(size=(200, dims)) + np.where(rng.random((200, 1)) < 1 / 3, 2.0, 0.0)) @ mix
    test_far = rng.normal(size=(200, dims)) * rng.uniform(1.0, 4.0, size=(200, 1)) @ mix
    test = np.vstack([test_normal, test_far])
    model = OneClassSVM(kernel="rbf", nu=nu, gamma=gamma, tol=1e-6).fit(train)
    decision = model.decision_function(test)
    cases.append(
        {
            "nu": nu,
            "gamma": gamma,
            "train": train.round(6).tolist(),
            "test": test.round(6).tolist(),
            "decision": decision.round(9).tolist(),
        }
    )

out = pathlib.Path(__file__).resolve().parent.parent / "tests" / "data" / "ocsvm_reference.json"
out.write_text(json.dumps({"sklearn": sklearn.__version__, "cases": cases}))
print(f"wrote {out} ({out.stat().st_size} bytes, scikit-learn {sklearn.__version__})")
