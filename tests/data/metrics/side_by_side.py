"""Scratch script (not part of sdeplug, never run by the tests): FID by pytorch-fid 0.3.0 and
torchmetrics 1.9.0 on fixed features, whose numbers tests/test_metrics.py records.

Their wheels were unpacked into /tmp/pf/x (pip download --no-deps pytorch-fid torchmetrics);
only the two FID functions are taken from their sources, so neither package's other
imports (torchvision, lightning) are needed.
"""

import ast
import sys

import numpy as np
import torch
from scipy import linalg

sys.path.insert(0, "/work/main")
from sdeplug.metrics import FeatureStats, fid  # noqa: E402


def function(path: str, name: str, namespace: dict):
    tree = ast.parse(open(path).read())
    node = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == name)
    exec(compile(ast.Module([node], []), path, "exec"), namespace)
    return namespace[name]


pytorch_fid = function("/tmp/pf/x/pytorch_fid/fid_score.py", "calculate_frechet_distance", {"np": np, "linalg": linalg})
torchmetrics_fid = function(
    "/tmp/pf/x/torchmetrics/image/fid.py", "_compute_fid", {"torch": torch, "Tensor": torch.Tensor}
)


def features():
    rng = np.random.default_rng(20261201)
    mix = rng.standard_normal((32, 32)) / 4
    real = rng.standard_normal((400, 32)) @ mix + 1.0
    fake = rng.standard_normal((300, 32)) @ (1.3 * mix) + 0.8
    return real, fake


def t(a):
    return torch.tensor(a, dtype=torch.float64)


full_real, full_fake = features()
for label, real, fake in (("", full_real, full_fake), ("singular ", full_real[:20], full_fake[:20])):
    mu1, s1 = real.mean(0), np.cov(real, rowvar=False)
    mu2, s2 = fake.mean(0), np.cov(fake, rowvar=False)
    print(label + "pytorch-fid 0.3.0", repr(float(pytorch_fid(mu1, s1, mu2, s2))))
    print(label + "torchmetrics 1.9.0", repr(float(torchmetrics_fid(t(mu1), t(s1), t(mu2), t(s2)))))
    print(label + "sdeplug", repr(fid(FeatureStats.of(t(real)), FeatureStats.of(t(fake)))))
