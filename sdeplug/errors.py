"""The errors sdeplug raises: each names what was wrong and what is accepted."""

from __future__ import annotations

import difflib
from collections.abc import Iterable


class SdeplugError(Exception):
    """Base class of every error sdeplug raises on purpose."""


def close_matches(name: str, known: Iterable[str]) -> list[str]:
    """Known names that look like ``name`` (for 'did you mean' hints)."""
    return difflib.get_close_matches(name, list(known), n=3, cutoff=0.6)


def _did_you_mean(name: str, known: Iterable[str]) -> str:
    matches = close_matches(name, known)
    return f" Did you mean {' or '.join(repr(m) for m in matches)}?" if matches else ""


def error_text(exc: BaseException) -> str:
    """An exception's message; attrs' validators raise with (message, attribute, ...) as their
    arguments, and only the message is for the user."""
    if len(exc.args) > 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc)


#: How the lines of torch's and numpy's refusals to load a file begin that only repeat advice.
_BOILERPLATE = (
    "Weights only load failed",
    "Check the documentation",
    "Please file an issue",
    "To allow loading",
    "For safety against",
    "In PyTorch 2.6",
    "(1)",
    "(2)",
)


def load_refusal(exc: BaseException, limit: int = 200) -> str:
    """The one line of a library's refusal to load a file that says what was refused (torch's
    weights-only loading, numpy's header checks), without the advice around it."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    for line in lines:  # torch names the refused global after this marker, then gives advice
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].split(". Please", 1)[0].strip()[:limit]
    useful = [line for line in lines if not line.startswith(_BOILERPLATE)]
    return (useful[0] if useful else lines[0] if lines else type(exc).__name__)[:limit]


class UnknownPartError(SdeplugError, LookupError):
    """A part was asked for by a name no plugin registered."""

    def __init__(self, kind: str, name: str, known: Iterable[str], load_errors: Iterable[str] = ()):
        known = sorted(known)
        self.kind, self.name, self.known = kind, name, known
        message = f"unknown {kind} {name!r}; known {kind}s: {', '.join(known) or '(none)'}." + _did_you_mean(
            name, known
        )
        failures = list(load_errors)
        if failures:
            message += " Some plugins failed to load and may have provided it: " + "; ".join(failures)
        super().__init__(message)


class OptionError(SdeplugError, TypeError):
    """A part was given an option it does not accept, or a value it refuses."""

    def __init__(self, kind: str, name: str, message: str):
        self.kind, self.name = kind, name
        super().__init__(f"{kind} {name!r}: {message}")

    @classmethod
    def unknown_option(cls, kind: str, name: str, option: str, accepted: Iterable[str]) -> OptionError:
        accepted = sorted(accepted)
        return cls(
            kind,
            name,
            f"unknown option {option!r}; accepted options: {', '.join(accepted) or '(none)'}."
            + _did_you_mean(option, accepted),
        )


class DuplicatePartError(SdeplugError, LookupError):
    """Two plugins registered parts of the same kind under one name."""

    def __init__(self, kind: str, name: str, claimants: Iterable[str]):
        self.kind, self.name, self.claimants = kind, name, list(claimants)
        super().__init__(
            f"{kind} {name!r} is registered by more than one plugin: {' and '.join(self.claimants)}. "
            "Uninstall one of them or limit the loaded plugins with SDEPLUG_LOAD_PLUGINS."
        )


class RegistrationError(SdeplugError, TypeError):
    """A plugin tried to register something that is not a part of the kind it claimed."""


class PluginError(SdeplugError, RuntimeError):
    """A plugin's own code failed (not the user's input): names the part and the plugin's error."""


class IncompatiblePartError(SdeplugError, TypeError):
    """A predictor, corrector or solver was combined with an SDE it cannot handle."""


class NonFiniteError(SdeplugError, FloatingPointError):
    """The sampling state stopped being finite; says where, at which time and after which part."""

    def __init__(self, where: str, t: float, part: str, state: str = "the sampling state"):
        self.where, self.t, self.part = where, t, part
        super().__init__(
            f"{state} became non-finite (NaN or inf) at {where} (t = {t:.6g}), "
            f"after the {part}. Check the score model near this time, or use more steps "
            "or a smaller corrector snr."
        )


class DataError(SdeplugError, ValueError):
    """Data that cannot be trained on or evaluated (non-finite values, a wrong shape)."""


class TrainingDivergedError(SdeplugError, FloatingPointError):
    """A training loss or gradient became non-finite; nothing from that step on is saved."""


class PlatformError(SdeplugError, RuntimeError):
    """This machine cannot do what the settings ask (torch.compile without a working compiler)."""


class ConfigError(SdeplugError, ValueError):
    """A configuration file or section is malformed."""


class WriteError(SdeplugError, OSError):
    """A file could not be written (a full disk, a read-only folder); the old one is kept."""


class SdeplugWarning(UserWarning):
    """Base class of the warnings sdeplug gives on purpose (the command line prints them on one line)."""


class DataMismatchWarning(SdeplugWarning):
    """A checkpoint is used with another data set than it was trained on."""


class DataNotice(SdeplugWarning):
    """Something done to the data that the user should know of (images converted to the declared channels)."""
