"""What `cgflow run --resume` may do besides continuing a checkpoint: start over a run that was
killed before its first checkpoint, and extend a run by changing its stopping keys."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from cgflow.config import (
    ConfigError,
    RunConfig,
    apply_overrides,
    config_differences,
    describe_differences,
    dump_config,
    load_config,
    validate_config,
)
from cgflow.core import run_directory as rd
from cgflow.learning.stopping import RULE_KINDS, Stopping

EXTENSIBLE = ("stopping.", "progress")
"""Config keys (prefixes) a resumed run may change: the stopping rule, and whether bars are shown."""


def extensible(key: str) -> bool:
    return any(key == p or key.startswith(p) for p in EXTENSIBLE)


def saved_config(run_dir: Path) -> RunConfig:
    path = Path(run_dir) / rd.CONFIG
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as err:
        raise ConfigError(f"cannot parse {path}: {str(err).splitlines()[0]}") from None
    return validate_config(data or {})


def requested_config(run_dir: Path, config: str | None, overrides: list[str], seed: int | None) -> RunConfig | None:
    """The config a resume asks for: ``config`` (+ overrides, seed) if given, else the saved one with the
    overrides and seed applied; None when nothing was asked (continue with the saved config)."""
    if config is not None:
        return load_config(config, overrides, seed)
    if not overrides and seed is None:
        return None
    data = apply_overrides(saved_config(run_dir).model_dump(mode="json"), list(overrides))
    if seed is not None:
        data["seed"] = seed
    return validate_config(data)


def leftovers_of_unstarted_run(run_dir: Path) -> list[Path] | None:
    """The files of a run killed before its first checkpoint (config.yaml and temporary files of
    interrupted atomic writes), or None if ``run_dir`` is not such a run (no config.yaml, a
    checkpoint, or any other file in it)."""
    run_dir = Path(run_dir)
    if not (run_dir / rd.CONFIG).is_file() or (run_dir / rd.CHECKPOINT).exists():
        return None
    files = list(run_dir.iterdir())
    ours = [p for p in files if p.name == rd.CONFIG or (p.is_file() and p.name.startswith(".") and p.name.endswith(".tmp"))]
    return ours if len(ours) == len(files) else None


def check_extension(run_dir: Path, saved: RunConfig, new: RunConfig) -> list[str]:
    """The differing keys, all extensible; ConfigError naming the others."""
    diff = config_differences(saved, new)
    bad = [k for k in diff if not extensible(k)]
    if bad:
        raise ConfigError(f"cannot resume {run_dir}: the config differs from the saved one in "
                          f"{describe_differences(saved, new, bad)}; on --resume only stopping.* and progress "
                          f"may change")
    return diff


def _stopped_by_stopping_rule(state) -> bool:
    """Whether a run finished because of its ``stopping`` keys (not MC exhaustion / end of a grid run)."""
    return state.done and state.stop_kind in RULE_KINDS


def apply_extension(run, new: RunConfig) -> str:
    """Give a resumed :class:`~cgflow.learning.run.ActiveLearningRun` the changed stopping keys of
    ``new``: saved to config.yaml, and a run that its old stopping rule had finished is reopened if
    the new rule lets it continue.  Returns a sentence for the console."""
    st = run.state
    stopping_changed = any(k.startswith("stopping.") for k in config_differences(run.cfg, new))
    run.cfg = new
    rd.atomic_write_text(run.run_dir / rd.CONFIG, dump_config(new))
    if not stopping_changed:
        return ""
    if st.done and not _stopped_by_stopping_rule(st):
        return f"the run had finished for another reason ({st.stop_reason}); the new stopping keys change nothing"
    n = len(st.rows)
    met = Stopping(new.stopping).check_rows(st.rows)
    if met is not None:
        st.stop(met)
        return f"the new stopping rule is already met after {n} iterations ({met.message})"
    reopened = st.done
    st.done, st.stop_reason, st.stop_kind = False, "", ""
    return (f"extended: {'reopened after' if reopened else 'continuing from'} iteration {n}, "
            f"up to stopping.max_iterations = {new.stopping.max_iterations}")


@dataclass
class OpenedRun:
    """A run directory opened by :func:`open_run`: the run, and what happened to it on the way."""

    runner: object  # cgflow.learning.run.ActiveLearningRun
    resumed: bool  # continued from its checkpoint
    started_over: bool  # --resume of a run killed before its first checkpoint: started over
    extension: str  # apply_extension's sentence ("" when the stopping keys did not change)


def open_run(out: Path, config: str | None, overrides: list[str], seed: int | None, *, resume: bool,
             reporters=()) -> OpenedRun:
    """Open the run directory ``out`` as ``cgflow run CONFIG --out OUT [--resume]`` does (shared by
    ``cgflow run`` and ``cgflow sweep``): a new run from ``config`` + ``overrides`` + ``seed``; or with
    ``resume`` the run from its checkpoint (extended if only stopping keys differ), or started over if
    it was killed before its first checkpoint.  Whether it has finished: ``runner.state.done``.
    Nothing runs yet.  Raises ConfigError / RunDirectoryError with one-line messages."""
    from cgflow.learning.run import ActiveLearningRun

    out = Path(out)
    extend_cfg, started_over = None, False
    if resume:
        leftovers = leftovers_of_unstarted_run(out)
        if leftovers is not None:
            # killed before its first checkpoint: nothing was computed that could be kept
            cfg = requested_config(out, config, overrides, seed) or saved_config(out)
            for p in leftovers:
                p.unlink()
            resume, started_over = False, True
        elif not (out / rd.CHECKPOINT).is_file():
            raise rd.RunDirectoryError(f"cannot resume: no checkpoint at {out / rd.CHECKPOINT} (nothing to resume; "
                                       f"start a run with `cgflow run CONFIG --out {out}`)")
        else:
            new = requested_config(out, config, overrides, seed)
            if new is not None and check_extension(out, saved_config(out), new):
                extend_cfg = new
            cfg = None
    else:
        if config is None:
            raise ConfigError("give a preset name or a YAML file (see `cgflow presets`)")
        cfg = load_config(config, overrides, seed)
        if leftovers_of_unstarted_run(out) is not None:
            raise rd.RunDirectoryError(f"run directory {out} exists but has no checkpoint (the run was stopped before "
                                       f"its first one); start it over with `cgflow run --resume --out {out}`, or "
                                       f"choose another --out")
    runner = ActiveLearningRun(cfg, out, resume=resume, reporters=reporters)
    extension = apply_extension(runner, extend_cfg) if extend_cfg is not None else ""
    return OpenedRun(runner, resume, started_over, extension)


def finished_note(runner) -> str:
    """The console sentence for a run that has already finished (with how to extend it, where that applies)."""
    reason = runner.state.stop_reason
    hint = (f"; extend it with `cgflow run --resume --out {runner.run_dir} --set stopping.max_iterations=N`"
            if _stopped_by_stopping_rule(runner.state) else "")
    return f"this run has already finished: {reason}{hint}"
