"""Reverse-time SDE solving through torchsde.sdeint: its methods and its adaptive stepping.

torchsde integrates forward in time on (batch, d) states, so the reverse SDE
dx = [f - g^2 s] dt + g dw_bar (t decreasing) is integrated in s = T - t, where it
reads dx = -[f - g^2 s](x, T - s) ds + g(T - s) dW_s, and states of any event shape
are flattened to (batch, d) inside the plugin.

The predictor ``torchsde`` solves over one grid interval per step, so correctors can
be mixed in; with ``steps = 1`` it solves the whole interval [eps, T] in one call
(give ``dt`` or ``adaptive = true`` then).
"""

from __future__ import annotations

import weakref
from typing import Any

import attrs
import torch
import torchsde
from attrs import validators as v
from torch import Tensor

from sdeplug import SDE, Predictor, ReverseSDE, ScoreFn, hookimpl

#: torchsde method -> the SDE type it integrates. The reverse-time SDE's noise is
#: additive (g depends on t only), so Ito and Stratonovich forms coincide and every
#: method below solves the same equation.
METHODS = {
    "euler": "ito",
    "milstein": "ito",
    "srk": "ito",
    "euler_heun": "stratonovich",
    "heun": "stratonovich",
    "midpoint": "stratonovich",
    "reversible_heun": "stratonovich",
}


#: How many recent drift evaluations a solve keeps: more than an SRK step's stages.
_REMEMBERED_DRIFTS = 8


class _ReverseTimeSDE(torch.nn.Module):
    """The reverse SDE in s = T - t on flattened states, in torchsde's f / g protocol."""

    noise_type = "diagonal"

    def __init__(self, reverse: ReverseSDE, T: float, event_shape: tuple[int, ...], sde_type: str) -> None:
        super().__init__()
        self.reverse, self.T, self.event_shape, self.sde_type = reverse, T, event_shape, sde_type
        self._drifts: list[tuple[weakref.ref, float, Tensor]] = []

    def _x_t(self, s: Tensor | float, y: Tensor) -> tuple[Tensor, Tensor]:
        s = torch.as_tensor(s, device=y.device, dtype=y.dtype)
        return y.view(y.shape[0], *self.event_shape), (self.T - s).expand(y.shape[0])

    def f(self, s: Tensor, y: Tensor) -> Tensor:
        """The drift, each (state, time) evaluated once: torchsde's contract check evaluates the
        first one before solving, and its SRK step evaluates each stage's again for every later
        stage. Only for times on the host, which are read without waiting for a device. A drift
        is kept only while its state is alive (a step's stages), never for the whole solve."""
        on_host = not isinstance(s, Tensor) or s.device.type == "cpu"
        if on_host:
            key = float(s)
            self._drifts = [entry for entry in self._drifts if entry[0]() is not None]
            for state, time, drift in self._drifts:
                if state() is y and time == key:
                    return drift
        x, t = self._x_t(s, y)
        drift = -self.reverse.drift(x, t).reshape(y.shape)
        if on_host:
            self._drifts = [*self._drifts[-(_REMEMBERED_DRIFTS - 1) :], (weakref.ref(y), key, drift)]
        return drift

    def g(self, s: Tensor, y: Tensor) -> Tensor:
        _, t = self._x_t(s, y)
        return self.reverse.diffusion(t)[:, None].expand(y.shape)


@attrs.frozen
class TorchsdePredictor(Predictor):
    """One torchsde.sdeint solve of the reverse SDE from t to t_next.

    ``method``: euler, milstein (derivative-free), srk (strong order 1.5 here, the
    noise being additive), euler_heun, heun, midpoint, reversible_heun. ``dt`` is the
    internal step (default: the whole interval in one step); ``adaptive`` turns on
    torchsde's error control with ``rtol`` and ``atol``. Brownian motion is drawn
    from the generator, so a seed fixes the samples. torchsde works with Python floats for time, so each step reads
    the two times on the host.
    """

    name = "torchsde"

    sde: SDE
    score: ScoreFn
    method: str = attrs.field(default="srk", kw_only=True, validator=v.in_(tuple(METHODS)))
    dt: float | None = attrs.field(default=None, kw_only=True)
    adaptive: bool = attrs.field(default=False, kw_only=True, validator=v.instance_of(bool))
    rtol: float = attrs.field(default=1e-3, kw_only=True, converter=float, validator=v.gt(0.0))
    atol: float = attrs.field(default=1e-3, kw_only=True, converter=float, validator=v.gt(0.0))

    def __attrs_post_init__(self) -> None:
        if self.dt is not None and not (isinstance(self.dt, (int, float)) and self.dt > 0):
            raise ValueError(f"dt must be a positive number or None; got {self.dt!r}")

    def step(
        self,
        x: Tensor,
        t: Tensor,
        t_next: Tensor,
        state: None,
        generator: torch.Generator | None = None,
        *,
        jumped: bool = False,
    ) -> tuple[Tensor, None]:
        batch = x.shape[0]
        s0, s1 = (float(v) for v in (self.sde.T - t[0], self.sde.T - t_next[0]))
        y0 = x.reshape(batch, -1)
        reverse = self.sde.reverse(self.score)
        system = _ReverseTimeSDE(reverse, self.sde.T, tuple(x.shape[1:]), METHODS[self.method])
        entropy = None
        if generator is not None:
            entropy = int(torch.randint(2**62, (), generator=generator, device=generator.device))
        bm = torchsde.BrownianInterval(
            t0=s0,
            t1=s1,
            size=y0.shape,
            dtype=y0.dtype,
            device=y0.device,
            entropy=entropy,
            levy_area_approximation="space-time" if self.method == "srk" else "none",
        )
        options: dict[str, Any] = {"grad_free": True} if self.method == "milstein" else {}
        ys = torchsde.sdeint(
            system,
            y0,
            torch.tensor([s0, s1], dtype=y0.dtype, device=y0.device),
            bm=bm,
            method=self.method,
            dt=self.dt if self.dt is not None else s1 - s0,
            adaptive=self.adaptive,
            rtol=self.rtol,
            atol=self.atol,
            options=options,
        )
        return ys[-1].reshape(x.shape), None


@hookimpl
def register_predictors(register):
    register(TorchsdePredictor)
