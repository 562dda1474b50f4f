import ast, sys
import numpy as np, torch
from scipy import linalg

src = open("/tmp/pf/x/pytorch_fid/fid_score.py").read()
tree = ast.parse(src)
fn = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == "calculate_frechet_distance")
ns = {"np": np, "linalg": linalg}
exec(compile(ast.Module([fn], []), "fid_score", "exec"), ns)
src2 = open("/tmp/pf/x/torchmetrics/image/fid.py").read()
fn2 = next(n for n in ast.parse(src2).body if isinstance(n, ast.FunctionDef) and n.name == "_compute_fid")
ns2 = {"torch": torch, "Tensor": torch.Tensor}
exec(compile(ast.Module([fn2], []), "tm_fid", "exec"), ns2)


def features():
    rng = np.random.default_rng(20261201)
    mix = rng.standard_normal((32, 32)) / 4
    real = rng.standard_normal((400, 32)) @ mix + 1.0
    fake = rng.standard_normal((300, 32)) @ (1.3 * mix) + 0.8
    return real, fake


real, fake = features()
mu1, s1 = real.mean(0), np.cov(real, rowvar=False)
mu2, s2 = fake.mean(0), np.cov(fake, rowvar=False)
print("pytorch-fid 0.3.0", repr(float(ns["calculate_frechet_distance"](mu1, s1, mu2, s2))))
t = lambda a: torch.tensor(a, dtype=torch.float64)
print("torchmetrics 1.9.0", repr(float(ns2["_compute_fid"](t(mu1), t(s1), t(mu2), t(s2)))))
sys.path.insert(0, "/work/main")
from sdeplug.metrics import FeatureStats, fid

print("sdeplug", repr(fid(FeatureStats.of(t(real)), FeatureStats.of(t(fake)))))
# singular case: fewer samples than dimensions
small_r, small_f = real[:20], fake[:20]
mu1, s1 = small_r.mean(0), np.cov(small_r, rowvar=False)
mu2, s2 = small_f.mean(0), np.cov(small_f, rowvar=False)
print("singular pytorch-fid", repr(float(ns["calculate_frechet_distance"](mu1, s1, mu2, s2))))
print("singular torchmetrics", repr(float(ns2["_compute_fid"](t(mu1), t(s1), t(mu2), t(s2)))))
print("singular sdeplug", repr(fid(FeatureStats.of(t(small_r)), FeatureStats.of(t(small_f)))))
