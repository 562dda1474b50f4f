"""Scratch script (not part of sdeplug, never run by the tests): pytorch-fid 0.3.0's FID
Inception-v3 on random weights, whose pool features tests/test_inception.py records.

pytorch-fid's inception.py needs torchvision's inception.py: /tmp/tv holds 0.29.1's own
file (from its wheel) with stubs for the rest of torchvision; pytorch-fid's file is copied
there as pytorch_fid_inception.py. The weights are drawn by ``random_weights`` below (the
test draws the same), so the 95 MB real file is needed by neither.
"""

import sys

import torch
from safetensors.torch import save_file


def random_weights(state: dict, seed: int = 0) -> dict:
    """Deterministic weights for a state dict's keys and shapes (sorted keys, He-scaled convolutions)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for key in sorted(state):
        shape = state[key].shape
        if key.endswith("num_batches_tracked"):
            out[key] = torch.zeros((), dtype=torch.long)
        elif key.endswith("running_var"):
            out[key] = 1 + 0.1 * torch.rand(shape, generator=g)
        elif key.endswith(("running_mean", "bias")):
            out[key] = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith("bn.weight"):
            out[key] = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            fan_in = shape[1:].numel()
            out[key] = torch.randn(shape, generator=g) * (2 / fan_in) ** 0.5
    return out


if __name__ == "__main__":
    sys.path.insert(0, "/tmp/tv")
    import pytorch_fid_inception as reference

    skeleton = reference._inception_v3(num_classes=1008, aux_logits=False, weights=None).state_dict()
    weights = random_weights(skeleton)
    reference.load_state_dict_from_url = lambda *a, **k: weights  # no download: these weights
    model = reference.InceptionV3([3]).eval()
    g = torch.Generator().manual_seed(1)
    images = torch.randint(0, 256, (3, 3, 32, 32), generator=g).float() / 255  # as PNGs load: in [0, 1]
    with torch.no_grad():
        features = model(images)[0].squeeze(-1).squeeze(-1)
    save_file({"images": images, "features": features}, sys.argv[1])
    print(features.shape, features.abs().mean())
