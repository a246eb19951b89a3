"""Running a sweep with Optuna: storage, resuming, many workers, the trial count.

* Storage: a journal file in the run folder by default (``RUN/optuna.journal``),
  or any Optuna RDB URL (``sqlite:///...``, ``postgresql://...``, ``mysql://...``).
  Any number of worker processes, on any machines that reach the storage, can
  run the same command and share one study.
* The count: ``trials`` is the number of *finished* (complete) trials the study
  should hold in total, whoever ran them. A worker stops when the study has that
  many, or when the rest are running in other workers.
* Resuming: running the same command again continues the study. A trial that
  raised is recorded as failed with its error (user attrs ``error`` and
  ``traceback``); Ctrl-C fails the trial in flight and stops. A trial left
  RUNNING by a dead process (SIGKILL, power loss) is marked failed: at once when
  its worker ran on this host (its pid is gone), and through Optuna's heartbeat
  on RDB storage when it ran elsewhere.
* Grid search: the points are handed out by enqueuing them one at a time, so a
  point whose trial failed is tried again (Optuna's GridSampler counts a failed
  point as visited). A second worker that drew a point already taken skips it;
  a worker that would exceed the count skips too. A skipped trial is recorded as
  PRUNED with the reason in user attr ``skipped``. A point enqueued by a worker
  that died before running it is handed out again.
* Threads: each worker runs torch with one intra-op thread by default. The
  networks are tiny, so more threads gain nothing, and on a busy machine each
  extra OpenMP thread spins against other processes: on 2 shared cores one RL
  trial ran 20x slower with torch's default 2 threads. Use more cores by running
  more workers on the same storage. ``OMP_NUM_THREADS``, when set, wins.

Example:
    >>> from gradinstructor.search import load_sweep, run_sweep
    >>> study = run_sweep(load_sweep("strength"), trials=6)          # doctest: +SKIP
    >>> len(study.get_trials(states=[optuna.trial.TrialState.COMPLETE]))  # doctest: +SKIP
    6
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import socket
import time
import traceback
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from gradinstructor.config import SettingsError
from gradinstructor.search.sweepfile import Sweep

logger = logging.getLogger(__name__)

STORAGE_FILE = "optuna.journal"
DEFAULT_TRIALS = 10
HEARTBEAT_SECONDS = 30  # RDB storage: a worker's trials beat this often ...
GRACE_SECONDS = 120  # ... and count as dead after this long without a beat
UNCLAIMED_SECONDS = 600  # a RUNNING trial no worker ever claimed is failed after this long
CONNECT_TIMEOUT = 10


class StorageError(ValueError):
    """The study's storage cannot be opened or reached."""


class SweepError(RuntimeError):
    """The sweep stopped: too many trials in a row failed."""


class TrialSkipped(optuna.TrialPruned):
    """A trial that must not run (the count is reached, or its grid point is taken)."""


# --------------------------------------------------------------------------- storage


# scheme://user:password@host/path: the password runs to the last "@" before the host
_USERINFO = re.compile(r"^(?P<head>[^:/?#]+://[^:/@?#]*:)(?P<password>.*)@(?P<tail>[^@/]*(?:[/?].*)?)$",
                       re.DOTALL)
_QUERY_PASSWORD = re.compile(r"(?i)([?&]password=)([^&#]*)")


def _password(url: str) -> str | None:
    match = _USERINFO.match(url)
    return match.group("password") if match else None


def redact(url: str) -> str:
    """``url`` with its password (in the user part or a ``password=`` query) shown as ``***``.

    Example:
        >>> redact("postgresql://me:secret@127.0.0.1:5432/db")
        'postgresql://me:***@127.0.0.1:5432/db'
    """
    text = str(url)
    match = _USERINFO.match(text)
    if match:
        text = f"{match.group('head')}***@{match.group('tail')}"
    return _QUERY_PASSWORD.sub(r"\1***", text)


def _scrub(text: str, url: str) -> str:
    """Remove the password of ``url`` from ``text`` (a driver's message may quote it)."""
    text = text.replace(url, redact(url))
    secrets = [m.group(2) for m in _QUERY_PASSWORD.finditer(url)]
    password = _password(url)
    if password:
        # a password with an unescaped "@" is split by the URL parser; hide its pieces too
        secrets += [password, *password.split("@")]
    for secret in sorted({s for s in secrets if len(s) >= 3}, key=len, reverse=True):
        text = text.replace(secret, "***")
    return text


def _url_problem(url: str) -> str | None:
    """What is wrong with the form of an RDB URL, or None."""
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        parsed.port  # noqa: B018 (parses the port)
    except Exception as err:  # ArgumentError, ValueError (a port that is not a number)
        return f"it does not parse ({_first_line(err)})"
    password = _password(url) or ""
    if any(c in password for c in "@/?#"):
        return ("its password holds one of @ / ? #, which must be percent-encoded "
                "(e.g. %40 for @)")
    return None


def _with_driver(url: str) -> str:
    """Give a bare ``postgresql://`` URL an installed driver (psycopg 3, else psycopg2)."""
    if not url.startswith("postgresql://") and not url.startswith("postgres://"):
        return url
    import importlib.util

    rest = url.split("://", 1)[1]
    for module in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(module) is not None:
            return f"postgresql+{module}://{rest}"
    raise StorageError(
        f"storage {redact(url)}: no PostgreSQL driver is installed; install one with "
        "`pip install 'gradinstructor[postgres]'` (psycopg)")


def open_storage(url: str | os.PathLike | None, default_path: str | os.PathLike):
    """Open the study storage: an Optuna RDB URL, or a journal file.

    Args:
        url: an RDB URL (``sqlite:///x.db``, ``postgresql://user:pw@host/db``), the path
            of a journal file, or None for ``default_path``.
        default_path: the journal file used when ``url`` is None.

    Returns:
        An Optuna storage.

    Raises:
        StorageError: the storage cannot be reached or opened; the message names the
            URL with its password hidden. It fails at once rather than on the first trial.

    Example:
        >>> open_storage("postgresql://me:secret@127.0.0.1:1/db", "x")   # doctest: +SKIP
        StorageError: cannot open storage postgresql://me:***@127.0.0.1:1/db: ...
    """
    text = None if url is None else str(url)
    if text is None or "://" not in text:
        return _journal(Path(text or default_path))
    problem = _url_problem(text)
    if problem is not None:
        raise StorageError(f"storage {redact(text)}: {_scrub(problem, text)}; {STORAGE_FORMS}")
    full = _with_driver(text)
    kwargs: dict[str, Any] = {}
    if full.startswith("postgresql"):
        kwargs = {"connect_args": {"connect_timeout": CONNECT_TIMEOUT}}
    from sqlalchemy.exc import ArgumentError, NoSuchModuleError

    try:
        return _rdb(full, kwargs)
    except ImportError as err:
        hint = ("`pip install 'gradinstructor[postgres]'`" if text.startswith("postgres")
                else "e.g. `pip install PyMySQL` and a mysql+pymysql:// URL for MySQL"
                if text.startswith("mysql") else "the driver the URL names")
        raise StorageError(
            f"storage {redact(text)}: the database driver is missing "
            f"({_scrub(str(err.__cause__ or err), text)}); install {hint}") from None
    except (NoSuchModuleError, ArgumentError) as err:
        raise StorageError(
            f"storage {redact(text)}: not a storage URL SQLAlchemy knows ({type(err).__name__}: "
            f"{_scrub(_first_line(err), text)}); {STORAGE_FORMS}") from None
    except Exception as err:
        check = ("check that its folder exists and is writable" if text.startswith("sqlite")
                 else "check that the server is running and that the URL's user, password, "
                      "host, port and database are right")
        raise StorageError(
            f"cannot open storage {redact(text)}: {type(err).__name__}: "
            f"{_scrub(_first_line(err), text)}; {check}") from None


STORAGE_FORMS = ("give sqlite:///PATH.db, postgresql://USER:PASSWORD@HOST:PORT/DB, "
                 "mysql+pymysql://USER:PASSWORD@HOST/DB, or the path of a journal file")


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else ""


def _rdb(url: str, engine_kwargs: dict, attempts: int = 3):
    """RDBStorage with heartbeats; retried when two workers create Optuna's tables at once."""
    from sqlalchemy.exc import IntegrityError, ProgrammingError

    for attempt in range(attempts):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                return optuna.storages.RDBStorage(
                    url, engine_kwargs=engine_kwargs, heartbeat_interval=HEARTBEAT_SECONDS,
                    grace_period=GRACE_SECONDS)
        except (IntegrityError, ProgrammingError):
            if attempt == attempts - 1:
                raise
            time.sleep(0.5 + random.random())


def _journal(path: Path):
    from optuna.storages.journal import JournalFileBackend, JournalStorage

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    except OSError as err:
        raise StorageError(f"cannot open the journal file {path}: {err}; pass a writable "
                           "--storage path or URL") from None


# --------------------------------------------------------------------------- workers


def _process_start(pid: int) -> str | None:
    """The start time of process ``pid`` (clock ticks since boot), where /proc has it."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]  # field 22, counted after the command name


def worker_identity() -> dict:
    """Who runs a trial: host, pid and the process's start time (against pid reuse)."""
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "started": _process_start(os.getpid())}


def worker_alive(worker: dict) -> bool | None:
    """Whether the worker that claimed a trial still runs: None when it ran on another host."""
    if worker.get("host") != socket.gethostname():
        return None
    pid = int(worker.get("pid", -1))
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    if stat.rsplit(")", 1)[1].split()[0] == "Z":  # a zombie: killed, not yet reaped
        return False
    started = worker.get("started")
    return started is None or _process_start(pid) == started


def _enqueuer_alive(trial) -> bool:
    """Whether the worker that enqueued a WAITING trial may still run it."""
    worker = trial.user_attrs.get("enqueued_by")
    return worker is None or worker_alive(worker) is not False


def fail_dead_trials(study: optuna.Study) -> list[int]:
    """Mark RUNNING trials whose worker is dead as FAIL, with the reason in user attr error.

    A trial's worker is dead when it ran on this host and its process is gone,
    or when no worker claimed it for ``UNCLAIMED_SECONDS``. Trials of workers on
    other hosts are left to Optuna's heartbeat (RDB storage).

    Returns:
        The numbers of the trials marked failed.
    """
    storage, failed = study._storage, []
    now = time.time()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get("worker")
        if worker is not None:
            if worker_alive(worker) is not False:
                continue
            reason = (f"worker {worker['host']}:{worker['pid']} died while this trial ran "
                      "(killed?); the trial in flight is lost, the study goes on")
        else:
            started = trial.datetime_start.timestamp() if trial.datetime_start else now
            if now - started < UNCLAIMED_SECONDS:
                continue
            reason = "no worker claimed this trial; it was left RUNNING by a dead process"
        try:
            storage.set_trial_user_attr(trial._trial_id, "error", reason)
            storage.set_trial_state_values(trial._trial_id, TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            continue  # another worker got there first
        logger.warning("trial %d: %s", trial.number, reason)
        failed.append(trial.number)
    return failed


# --------------------------------------------------------------------------- the study


def make_sampler(sweep: Sweep, seed: int | None, n_trials: int):
    """grid -> GridSampler, random -> RandomSampler, bayes -> TPESampler."""
    if sweep.method == "grid":
        return optuna.samplers.GridSampler(sweep.grid_space(), seed=seed)
    if sweep.method == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    startup = max(2, min(10, n_trials // 3))
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup)


def open_study(sweep: Sweep, storage, study_name: str, n_trials: int,
               seed: int | None = None) -> optuna.Study:
    """Create the study, or load it to resume; check that it optimises the same way.

    Raises:
        SettingsError: the stored study optimises in the other direction.
    """
    direction = "maximize" if sweep.goal == "maximize" else "minimize"
    study = optuna.create_study(storage=storage, study_name=study_name, direction=direction,
                                load_if_exists=True)
    if study.direction.name.lower() != direction:
        raise SettingsError(
            f"study {study_name!r} was created to {study.direction.name.lower()} its metric, "
            f"but {sweep.source} says goal {sweep.goal}; pick another --study name")
    stored = study.user_attrs.get("sweep")
    if stored is None:
        study.set_user_attr("sweep", sweep.raw)
        study.set_user_attr("metric", sweep.metric)
    elif stored != sweep.raw:
        logger.warning("study %s: the sweep file changed since the study began; finished "
                       "trials keep the settings they ran with", study_name)
    existing = len(study.get_trials(deepcopy=False))
    # a resumed or second worker must not replay the first one's draws
    study.sampler = make_sampler(sweep, None if seed is None else seed + existing, n_trials)
    return study


@contextlib.contextmanager
def torch_threads(threads: int | None):
    """Run torch with ``threads`` intra-op threads inside the block, then restore the count.

    Nothing changes when ``threads`` is None or ``OMP_NUM_THREADS`` is set (the user chose).
    """
    import torch

    if threads is None or os.environ.get("OMP_NUM_THREADS"):
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def count_trials(study: optuna.Study) -> tuple[int, int]:
    """(complete, running) trials of the study."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING))
    complete = sum(t.state == TrialState.COMPLETE for t in trials)
    return complete, len(trials) - complete


def _params_of(trial) -> dict:
    """The parameters of a trial, including those fixed by enqueue_trial and not yet drawn."""
    return {**trial.system_attrs.get("fixed_params", {}), **trial.params}


class SweepRunner:
    """Runs trials of one study until it holds ``n_trials`` complete ones.

    Args:
        study: the Optuna study (see :func:`open_study`).
        sweep: the validated sweep.
        n_trials: complete trials the study should hold in total.
        out: run folder: ``trials/N/enn.pt`` and the wandb runs go there.
        tracker: "wandb" (one run per trial, in one group) or "none".
        progress_bar: show a tqdm bar over trials.
        max_failures: stop after this many trials in a row failed.
        seed: orders the grid points.
        threads: torch intra-op threads while trials run (None: leave torch's setting).
        device: where this worker's trials run: auto (CUDA when available), cpu or cuda.
    """

    def __init__(self, study: optuna.Study, sweep: Sweep, n_trials: int, out: Path,
                 tracker: str = "wandb", progress_bar: bool = True, max_failures: int = 3,
                 seed: int | None = None, threads: int | None = 1,
                 device: Any = "auto") -> None:
        from gradinstructor.device import resolve_device

        self.study, self.sweep, self.n_trials = study, sweep, n_trials
        self.out, self.tracker_kind = Path(out), tracker
        self.progress_bar, self.max_failures = progress_bar, max_failures
        self.seed, self.threads = seed, threads
        self.device = resolve_device(device)  # ValueError now, not in every trial
        self.worker = worker_identity()
        self.ran: list[int] = []  # numbers of the trials this worker ran to completion

    def run(self) -> list[int]:
        """Run trials until the count is reached; returns the numbers this worker completed.

        Raises:
            SweepError: ``max_failures`` trials in a row failed.
            KeyboardInterrupt: Ctrl-C; the trial in flight is recorded as failed.
        """
        from tqdm.auto import tqdm

        complete, _ = count_trials(self.study)
        bar = tqdm(total=self.n_trials, initial=min(complete, self.n_trials), unit="trial",
                   desc=f"sweep {self.study.study_name}", disable=not self.progress_bar)
        failures = 0
        try:
            with torch_threads(self.threads):
                while self._more_to_run(bar):
                    if self.sweep.method == "grid" and not self._enqueue_grid_point():
                        logger.info("every grid point is finished, running or queued")
                        break
                    trial = self._run_one()
                    if trial is None or trial.state == TrialState.PRUNED:
                        continue
                    if trial.state == TrialState.COMPLETE:
                        failures = 0
                        self.ran.append(trial.number)
                        continue
                    failures += 1
                    error = trial.user_attrs.get("error", "unknown error")
                    logger.warning("trial %d failed: %s", trial.number, error)
                    if failures >= self.max_failures:
                        raise SweepError(
                            f"{failures} trials in a row failed; the last, trial "
                            f"{trial.number}: {error}. Fix the cause and run the same command "
                            "again: finished trials are kept")
        finally:
            bar.close()
        return self.ran

    def _more_to_run(self, bar) -> bool:
        fail_dead_trials(self.study)
        complete, running = count_trials(self.study)
        bar.n = min(complete, self.n_trials)
        bar.refresh()
        if complete >= self.n_trials:
            return False
        if self._target_reached():
            logger.info("metric %s reached its target %s", self.sweep.metric, self.sweep.target)
            return False
        if complete + running >= self.n_trials:
            logger.info("the remaining %d trials run in other workers", running)
            return False
        return True

    def _target_reached(self) -> bool:
        if self.sweep.target is None:
            return False
        try:
            best = self.study.best_value
        except ValueError:  # no complete trial yet
            return False
        if self.sweep.goal == "maximize":
            return best >= self.sweep.target
        return best <= self.sweep.target

    def _enqueue_grid_point(self) -> bool:
        """Enqueue the first grid point no complete, running or waiting trial holds.

        A waiting trial enqueued by a worker that has died does not hold its point: the
        point is enqueued again (whichever of the two runs second is skipped as taken).
        """
        states = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING)
        taken = [_params_of(t) for t in self.study.get_trials(deepcopy=False, states=states)
                 if t.state != TrialState.WAITING or _enqueuer_alive(t)]
        points = self.sweep.grid_points()
        random.Random(self.seed or 0).shuffle(points)
        for point in points:
            if point not in taken:
                self.study.enqueue_trial(point, user_attrs={"enqueued_by": self.worker})
                return True
        return False

    def _run_one(self):
        finished: list = []
        with _quiet_optuna():
            self.study.optimize(self._objective, n_trials=1, catch=(Exception,),
                                callbacks=[lambda _study, trial: finished.append(trial)],
                                gc_after_trial=True)
        return finished[-1] if finished else None

    def _skip_if_not_needed(self, trial: optuna.Trial, params: dict) -> None:
        states = (TrialState.COMPLETE, TrialState.RUNNING)
        ahead = [t for t in self.study.get_trials(deepcopy=False, states=states)
                 if t.number < trial.number]
        reason = None
        if len(ahead) >= self.n_trials:
            reason = f"the study already has {self.n_trials} trials finished or running"
        elif self.sweep.method == "grid":
            taken = [t.number for t in ahead if _params_of(t) == params]
            if taken:
                reason = f"grid point {params} is already taken by trial {taken[0]}"
        if reason is not None:
            trial.set_user_attr("skipped", reason)
            raise TrialSkipped(reason)

    def _objective(self, trial: optuna.Trial) -> float:
        from gradinstructor.search.trial import plan_trial, run_trial
        from gradinstructor.tracking import make_tracker

        trial.set_user_attr("worker", self.worker)
        params = {name: p.suggest(trial) for name, p in self.sweep.searched.items()}
        self._skip_if_not_needed(trial, params)
        settings = {**self.sweep.constants, **params}
        trial.set_user_attr("settings", settings)
        tracker = None
        try:  # anything that goes wrong from here on is recorded with the trial
            plan = plan_trial(settings, where=f"trial {trial.number}")
            tracker = make_tracker(self.tracker_kind,
                                   project=self.sweep.project or "gradinstructor",
                                   directory=self.out, config={**settings, "trial": trial.number},
                                   name=f"{self.study.study_name}-{trial.number}",
                                   group=self.study.study_name)
            if getattr(tracker, "run_dir", None) is not None:
                trial.set_user_attr("wandb_dir", str(tracker.run_dir))
            result = run_trial(plan, self.out / "trials" / str(trial.number), tracker,
                               device=self.device)
        except BaseException as err:
            _record_error(trial, err)
            raise
        finally:
            if tracker is not None:
                tracker.finish()
        for key, value in {**result.metrics, **result.diagnostics, **result.info}.items():
            trial.set_user_attr(key, value)
        return result.metrics[self.sweep.metric]


def _record_error(trial: optuna.Trial, err: BaseException) -> None:
    if isinstance(err, KeyboardInterrupt):
        message = "interrupted (Ctrl-C); run the same command again to go on"
    else:
        message = f"{type(err).__name__}: {err}"
    try:
        trial.set_user_attr("error", message[:2000])
        trial.set_user_attr("traceback", traceback.format_exc()[-4000:])
    except Exception:  # the storage itself may be what failed
        logger.exception("could not record the error of trial %d", trial.number)


@contextlib.contextmanager
def _quiet_optuna():
    """Optuna's per-trial INFO lines would break the progress bar; keep its warnings."""
    level = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    try:
        yield
    finally:
        optuna.logging.set_verbosity(level)


def target_count(sweep: Sweep, trials: int | None) -> int:
    """Complete trials to reach: ``trials``, else the file's run_cap, else the grid's size or
    DEFAULT_TRIALS; a grid caps it at its number of points."""
    if trials is not None and (isinstance(trials, bool) or not isinstance(trials, int)
                               or trials < 1):
        raise ValueError(f"trials must be a positive integer, but got {trials!r}")
    n = trials or sweep.run_cap
    if sweep.method == "grid":
        size = len(sweep.grid_points())
        if n is not None and n > size:
            logger.warning("%s: %d trials asked for, but the grid has %d points; running %d",
                           sweep.source, n, size, size)
        return min(n or size, size)
    return n or DEFAULT_TRIALS


def default_study_name(sweep: Sweep) -> str:
    """The file's ``name`` key, else the file's stem."""
    return sweep.name or Path(sweep.source).stem


def prepare_sweep(sweep: Sweep, trials: int | None = None, storage: str | None = None,
                  study_name: str | None = None, out: str | os.PathLike | None = None,
                  seeds: int | None = None, tracker: str = "wandb", progress_bar: bool = True,
                  seed: int | None = None, max_failures: int = 3,
                  threads: int | None = 1, device: Any = "auto") -> SweepRunner:
    """Open (create, resume or join) the sweep's study; the returned runner runs its trials.

    The arguments are those of :func:`run_sweep`. Everything that can be checked
    before a trial starts is checked here: the device can be used here, the storage
    is reached (or the call fails at once) and the study's direction matches the
    file's goal.

    Returns:
        A :class:`SweepRunner`; ``runner.run()`` returns the trials this worker completed,
        ``runner.study`` is the study.
    """
    from gradinstructor.device import resolve_device

    device = resolve_device(device)  # before the storage is created
    if seeds is not None:
        sweep = sweep.with_constant("seeds", seeds)
    study_name = study_name or default_study_name(sweep)
    out = Path(out) if out is not None else Path("runs") / "sweeps" / study_name
    n_trials = target_count(sweep, trials)
    backend = open_storage(storage, out / STORAGE_FILE)
    study = open_study(sweep, backend, study_name, n_trials, seed)
    complete, running = count_trials(study)
    logger.info("study %s: %d of %d trials complete, %d running", study_name, complete,
                n_trials, running)
    return SweepRunner(study, sweep, n_trials, out, tracker=tracker, progress_bar=progress_bar,
                       max_failures=max_failures, seed=seed, threads=threads, device=device)


def run_sweep(sweep: Sweep, trials: int | None = None, storage: str | None = None,
              study_name: str | None = None, out: str | os.PathLike | None = None,
              seeds: int | None = None, tracker: str = "wandb", progress_bar: bool = True,
              seed: int | None = None, max_failures: int = 3,
              threads: int | None = 1, device: Any = "auto") -> optuna.Study:
    """Run (or resume, or join) the sweep's study until it holds ``trials`` complete trials.

    Args:
        sweep: a validated sweep (:func:`~gradinstructor.search.load_sweep`).
        trials: complete trials the study should hold in total (default: see
            :func:`target_count`).
        storage: an Optuna RDB URL or a journal file path (default: ``OUT/optuna.journal``).
        study_name: default: the file's ``name`` or its stem.
        out: run folder (default: ``runs/sweeps/STUDY``).
        seeds: downstream seeds per trial; overrides the file's ``seeds``.
        tracker: "wandb" (offline unless logged in) or "none".
        progress_bar: show a tqdm bar over trials.
        seed: seeds the sampler (offset by the trials already in the study, so a
            resumed run draws new points); None draws from the OS.
        max_failures: stop after this many trials in a row failed.
        threads: torch intra-op threads while trials run (default 1; None leaves
            torch's setting; ``OMP_NUM_THREADS``, when set, wins).
        device: where the trials run: auto (the default: CUDA when available, else the
            CPU, as in stable-baselines3), cpu or cuda. A property of the worker, not a
            parameter of the study: workers on different machines may differ.

    Returns:
        The Optuna study.

    Raises:
        ValueError: a ``device`` this machine cannot use (before anything starts).
        StorageError: the storage cannot be reached (the URL is named, password hidden).
        SettingsError: the stored study optimises in the other direction.
        SweepError: ``max_failures`` trials in a row failed.

    Example:
        >>> study = run_sweep(load_sweep("strength"), trials=6, tracker="none")  # doctest: +SKIP
    """
    runner = prepare_sweep(sweep, trials=trials, storage=storage, study_name=study_name,
                           out=out, seeds=seeds, tracker=tracker, progress_bar=progress_bar,
                           seed=seed, max_failures=max_failures, threads=threads,
                           device=device)
    runner.run()
    return runner.study
