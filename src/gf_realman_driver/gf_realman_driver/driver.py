"""``ArmDriver``: everything the RM75 driver node does, without ROS.

It owns one ``ArmBackend`` and runs a control thread that

1. connects, retrying with exponential backoff (``Backoff``) after a failed attempt or a dropped
   link (any ``ArmConnectionError``; a frame mismatch at connect is retried the same way and never
   streams), and re-synchronises the safety state after each connect;
2. once connected, runs ``StreamController.tick`` on a ``PeriodicLoop`` at the streaming period
   (<= 10 ms for ``movep_canfd``). That loop only computes and sends set-points: the arm state is
   read by a second thread every ``state_period`` (from the controller's UDP push on the real arm),
   and gripper commands go out from a worker thread, so no reply is ever waited for in the tick.

Controller errors. Every state read is checked for controller system errors (collision, over-speed,
singularity, ...). Any error stops the arm and latches like the e-stop: chunks are refused with
reason ``controller_error`` and no set-point is sent, so streaming cannot clear it (a new motion
command would clear the error on the controller). Only the operator's ``clear_controller_error``
(the node's ``~/clear_error`` service) releases it, after clearing the error on the controller and
reading back a state without errors.

Signed commands: given a ``ChunkVerifier`` (gf_bringup.signing), ``submit`` checks the chunk's
signature before anything else; an unauthenticated chunk is refused with the verifier's reason
(``unsigned``, ``unknown_key``, ``bad_signature``, ``stale``, ``replayed``), counted in
``DriverStatus.signature_rejections`` (apart from the rejections of authentic chunks: an intruder's
traffic is not the policy's fault and does not enter the trial's record) and never reaches the
trial gate or the planner.

Callers (the node's callbacks) hand in chunks with ``submit``: the chunk is validated by
``gf_eval.action_space.validate_chunk`` and planned by the safety core (workspace box, floor,
per-step and per-second limits, joint checks); a chunk that fails anything is refused whole, never
clamped into motion. The planning takes milliseconds, so it runs outside the lock the streaming
tick takes (a submit holds that lock only to snapshot where the chunk starts and to queue the
result, and between joint solves the planning pauses while a tick is due, ``_yield_to_tick``);
a plan whose start went stale meanwhile (stop, e-stop, watchdog, safety stop, reconnect,
the trial ended or re-announced) is refused, never run. Trial gating (``trial_gating``): chunks
must carry the id of the trial announced on /gf/trial and are ignored once that trial's episode is
done, so a policy that keeps streaming between trials cannot move the arm while the operator
rearranges the cards.

``emergency_stop`` stops the arm and latches: every chunk is refused until ``resume``. ``home``
first lifts the tool straight up to ``home_safe_z`` (smoothed set-points) when it is lower, then
moves to the home posture with a planned joint move (streaming paused meanwhile). ``shutdown``
stops the arm, then closes the link.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from gf_bringup.signing import REASONS as SIGNATURE_REASONS
from gf_bringup.signing import ChunkFields, ChunkVerifier, SignatureRejected
from gf_eval.action_space import ChunkRejected, validate_chunk

from .arm import ArmBackend, ArmConnectionError, ArmError, ArmState, describe_controller_error
from .safety import ChunkExecutor, GripperCommander, Plan, SafetyViolation, TargetPlanner, Watchdog
from .smoothing import MotionLimits, SetpointSmoother
from .streaming import GripperWorker, PeriodicLoop, StreamController

log = logging.getLogger(__name__)

# The planning of a chunk pauses from this long before a streaming tick is due until it has run
# (``ArmDriver._yield_to_tick``): longer than one joint solve, which it checks before.
TICK_GUARD_S = 0.0015
TICK_POLL_S = 0.0002

# Refusals that are not the chunk's fault (no trial running, arm busy or down): "ignored", not
# counted against the trial's malformed/unsafe rejections.
IGNORED_REASONS = frozenset({"no_trial", "episode_done", "stale_trial", "not_connected", "homing"})


class Backoff:
    """Exponential retry delays: initial, initial * factor, ... capped at ``maximum``."""

    def __init__(self, initial: float = 0.5, maximum: float = 10.0, factor: float = 2.0):
        if not (0 < initial <= maximum) or factor < 1.0:
            raise ValueError("need 0 < initial <= maximum and factor >= 1")
        self.initial, self.maximum, self.factor = float(initial), float(maximum), float(factor)
        self.attempts = 0

    def next(self) -> float:
        """The delay before the next attempt (grows after every call until ``reset``)."""
        delay = min(self.maximum, self.initial * self.factor**self.attempts)
        self.attempts += 1
        return delay

    def reset(self) -> None:
        self.attempts = 0


@dataclass(frozen=True)
class DriverSettings:
    """Timing and behaviour of ``ArmDriver`` (the node fills it from its parameters)."""

    state_period: float = 0.02  # s between arm state reads (published at the node's rate)
    reconnect_initial: float = 0.5
    reconnect_max: float = 10.0
    home_joints: tuple[float, ...] | None = None  # rad; None: home() is refused
    home_speed: float = 0.2
    home_timeout: float = 30.0
    trial_gating: bool = True
    spin: float = 0.0  # PeriodicLoop busy-wait before each deadline (s)
    motion_limits: MotionLimits | None = None  # jerk/acceleration-limited set-points; None: the planner's own
    home_safe_z: float | None = None  # m; ~/home lifts the tool to this height first (None: no lift)
    gripper_in_worker: bool = True  # gripper commands from a worker thread (never wait in the tick)


@dataclass
class DriverStatus:
    """A snapshot for the node's status topic and for tests (plain data, JSON-able)."""

    connected: bool = False
    emergency_stopped: bool = False
    homing: bool = False
    motion_active: bool = False
    trial_id: str = ""
    trial_running: bool = False
    chunks_accepted: int = 0
    chunks_rejected: int = 0
    chunks_ignored: int = 0
    trial_chunks_accepted: int = 0
    trial_chunks_rejected: int = 0
    last_rejection: str = ""
    rejections: dict = field(default_factory=dict)
    watchdog_fired: int = 0
    setpoints_sent: int = 0
    connects: int = 0
    connect_failures: int = 0
    next_retry_s: float = 0.0
    last_error: str = ""
    controller_error: bool = False  # latched until the operator clears it
    controller_errors: list = field(default_factory=list)  # the latched errors, described
    controller_errors_now: list = field(default_factory=list)  # what the latest state reports
    state_age_s: float = -1.0  # age of the latest arm state (-1: none yet)
    smoother_restarts: int = 0
    safety_stops: int = 0
    signed_commands_required: bool = False
    signature_rejections: dict = field(default_factory=dict)  # reason -> chunks refused for their signature
    last_signature_rejection: str = ""

    def to_dict(self) -> dict:
        return asdict(self)


class ArmDriver:
    """See the module docstring. Thread-safe: ``submit``/``emergency_stop``/... from any thread."""

    def __init__(
        self,
        arm: ArmBackend,
        planner: TargetPlanner,
        *,
        watchdog_timeout: float = 1.0,
        gripper_force: float = 0.5,
        settings: DriverSettings | None = None,
        on_event: Callable[[str, str], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        verifier: ChunkVerifier | None = None,
    ):
        self.arm = arm
        self.verifier = verifier  # None: signatures are not checked (loopback, or the operator opted out)
        self.settings = settings or DriverSettings()
        self.clock = clock
        self._emit = on_event or (lambda level, text: getattr(log, level)(text))
        gripper = GripperCommander(max_opening=arm.gripper_max_opening, force=gripper_force)
        limits = self.settings.motion_limits
        self.controller = StreamController(
            arm, ChunkExecutor(planner), Watchdog(watchdog_timeout, clock=clock), gripper,
            smoother=SetpointSmoother(planner.stream_period, limits) if limits is not None else None,
            measured=self._fresh_state,
            gripper_worker=GripperWorker(arm) if self.settings.gripper_in_worker else None,
        )
        self._lock = threading.RLock()  # guards the controller and the fields below
        self._planning = threading.Lock()  # serialises submits (planning happens outside _lock)
        self._next_tick_at: float | None = None  # about when the streaming loop ticks next (monotonic s)
        self._ticks_done = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._connected = False
        self._estop = False
        self._homing = False
        self._fault: tuple[int, ...] = ()  # latched controller errors
        self._state_thread: threading.Thread | None = None
        self._state: ArmState | None = None
        self._state_read_at = -math.inf
        self._state_wall_time = 0.0  # time.time() of the latest state read (stamps the published state)
        self._backoff = Backoff(self.settings.reconnect_initial, self.settings.reconnect_max)
        self._status = DriverStatus()
        self._rejections: Counter[str] = Counter()
        self._signature_rejections: Counter[str] = Counter()
        self._trial: tuple[str, int] | None = None  # (trial id, announcement stamp ns)
        self._trial_running = False
        self._done: dict[str, int] = {}  # trial id -> stamp of its latest "done" status
        self.loop_stats = None  # LoopStats of the last streaming period (until a disconnect)

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the control thread (connects in the background)."""
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="arm-driver", daemon=True)
            self._thread.start()
            self._state_thread = threading.Thread(target=self._read_states, name="arm-state", daemon=True)
            self._state_thread.start()

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the control thread, stop the arm (if connected), close the link. Idempotent."""
        self._stop.set()
        thread, self._thread = self._thread, None
        if thread is not None:
            thread.join(timeout)
        state_thread, self._state_thread = self._state_thread, None
        if state_thread is not None:
            state_thread.join(timeout)
        with self._lock:
            try:
                if self._connected:
                    self.controller.halt()
            except ArmError as exc:
                self._emit("error", f"stopping the arm at shutdown failed: {exc}")
            finally:
                self._connected = False
        self.arm.close()

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def latest_state(self) -> ArmState | None:
        """The most recent arm state read by the control thread (None before the first)."""
        return self._state

    @property
    def latest_state_time(self) -> float:
        """Wall-clock time (``time.time()``) at which ``latest_state`` was read."""
        return self._state_wall_time

    def wait_connected(self, timeout: float) -> bool:
        """Block until connected (True) or ``timeout`` s passed (False)."""
        deadline = self.clock() + timeout
        while not self._connected and self.clock() < deadline:
            time.sleep(0.01)
        return self._connected

    # -- control thread -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stop.is_set():
            if not self._connected:
                if not self._try_connect():
                    continue
            stats = PeriodicLoop(self.controller.executor.planner.stream_period, spin=self.settings.spin).run(
                self._tick, stop=self._stop
            )
            self.loop_stats = stats

    def _try_connect(self) -> bool:
        try:
            self.arm.connect()
            state = self.arm.state()
        except ArmError as exc:
            delay = self._backoff.next()
            with self._lock:
                self._status.connect_failures += 1
                self._status.last_error = str(exc)
                self._status.next_retry_s = delay
            self._emit("error", f"arm connection failed (attempt {self._backoff.attempts}): {exc}; retrying in {delay:.3g} s")
            try:
                self.arm.close()
            except ArmError:
                pass
            self._stop.wait(delay)
            return False
        with self._lock:
            # Fresh start: no stale motion, no stale rate history, the next chunk starts from here.
            self.controller.executor.cancel()
            self.controller.executor.planner.reset_history()
            self.controller.watchdog.disarm()
            self.controller.gripper.reset()
            self._state, self._state_wall_time, self._state_read_at = state, time.time(), self.clock()
            self._connected = True
            self._status.connects += 1
            self._status.next_retry_s = 0.0
            self._backoff.reset()
        where = getattr(self.arm, "address", type(self.arm).__name__)
        self._emit("info", f"arm connected ({where}); EE at {np.round(state.ee_xyz, 3).tolist()} m")
        if state.emergency_stopped:
            self._estop = True
        self._check_controller_errors(state)
        return True

    def _connection_lost(self, exc: ArmError) -> None:
        with self._lock:
            self._connected = False
            self.controller.executor.cancel()
            self.controller.watchdog.disarm()
            self.controller.gripper.reset()
            self._status.last_error = str(exc)
        self._emit("error", f"lost the arm: {exc}; motion dropped, reconnecting")
        try:
            self.arm.close()
        except ArmError:
            pass

    def _tick(self, now: float) -> bool:
        """One streaming period; returns False to leave the loop (link lost)."""
        try:
            return self._tick_once(now)
        finally:
            self._ticks_done += 1
            self._next_tick_at = now + self.controller.executor.planner.stream_period

    def _tick_once(self, now: float) -> bool:
        try:
            return self._tick_inner(now)
        except Exception as exc:  # noqa: BLE001 - a bug must stop the arm, not kill the control thread
            self._emit("error", f"internal error in the control loop ({type(exc).__name__}: {exc}); motion stopped")
            with self._lock:
                self.controller.executor.cancel()
                self.controller.watchdog.disarm()
            try:
                self.arm.stop()
            except Exception:  # noqa: BLE001 - already reporting the original error
                pass
            return not self._stop.is_set()

    def _yield_to_tick(self) -> None:
        """Called by the planning between joint solves: when the streaming tick is about due, wait
        until it has run. Python threads share one interpreter lock, which a thread running Python
        (the planning) hands over only every switch interval; without this the tick would wait for
        it, once per hand-over, and a chunk being planned would still delay a set-point."""
        due = self._next_tick_at
        if due is None:
            return
        period = self.controller.executor.planner.stream_period
        now = time.monotonic()
        if now < due - TICK_GUARD_S or now > due + period:  # not due yet, or the loop is not ticking
            return
        done = self._ticks_done
        while self._ticks_done == done and time.monotonic() < due + period:
            time.sleep(TICK_POLL_S)

    def _tick_inner(self, now: float) -> bool:
        if not self._connected:
            return False  # the state thread lost the link: reconnect
        try:
            with self._lock:
                if not self._homing and not self._fault:
                    result = self.controller.tick(now)
                    if result.watchdog_fired:
                        self._emit("warning", f"watchdog: no valid chunk for {self.controller.watchdog.timeout:.2f} s; arm stopped")
                    if result.safety_stop:
                        self._status.safety_stops += 1
                        self._status.last_error = result.safety_stop
                        self._emit("error", f"safety stop, arm stopped: {result.safety_stop}")
        except ArmConnectionError as exc:
            self._connection_lost(exc)
            return False
        except ArmError as exc:
            # Refused / timed out: the controller already dropped the queued motion; hold still.
            with self._lock:
                self._status.last_error = str(exc)
            self._emit("error", f"arm command failed, motion stopped: {exc}")
            try:
                with self._lock:
                    self.controller.halt()
            except ArmConnectionError as lost:
                self._connection_lost(lost)
                return False
            except ArmError:
                pass
        return not self._stop.is_set()

    # -- state thread ---------------------------------------------------------------------------

    def _read_states(self) -> None:
        """Read the arm state every ``state_period`` (off the control tick) and check its errors."""
        period = self.settings.state_period
        while not self._stop.is_set():
            started = self.clock()
            if self._connected:
                try:
                    self._read_state_once()
                except Exception as exc:  # noqa: BLE001 - a bug must not end error checking
                    self._emit("error", f"internal error reading the arm state ({type(exc).__name__}: {exc})")
            self._stop.wait(max(0.0, period - (self.clock() - started)))

    def _read_state_once(self) -> None:
        try:
            state = self.arm.state()
        except ArmConnectionError as exc:
            if self._connected:
                self._connection_lost(exc)
            return
        except ArmError as exc:
            with self._lock:
                self._status.last_error = str(exc)
            return
        self._state, self._state_wall_time, self._state_read_at = state, time.time(), self.clock()
        self._check_controller_errors(state)

    def _fresh_state(self) -> ArmState | None:
        """The latest state if it is recent enough to restart motion from, else None (wait)."""
        if self._state is None or self.clock() - self._state_read_at > max(0.1, 5 * self.settings.state_period):
            return None
        return self._state

    def _check_controller_errors(self, state: ArmState) -> None:
        """Any controller system error: stop the arm and latch (see the module docstring)."""
        codes = tuple(code for code in state.error_codes if code != 0)
        if not codes:
            return
        with self._lock:
            if self._fault:
                return
            self._fault = codes
            self.controller.executor.cancel()
            self.controller.watchdog.disarm()
            self.controller.gripper.reset()
        described = ", ".join(describe_controller_error(code) for code in codes)
        try:
            self.arm.stop()
        except ArmError as exc:
            self._emit("error", f"stopping the arm after a controller error failed: {exc}")
        self._emit("error", f"CONTROLLER ERROR {described}: arm stopped; chunks are refused until an operator "
                            f"clears it (~/clear_error)")

    def clear_controller_error(self) -> tuple[bool, str]:
        """Operator action: clear the error on the controller, confirm, release the latch."""
        with self._lock:
            latched = self._fault
            if not self._connected:
                return False, "the arm is not connected"
        try:
            self.arm.clear_controller_error()
        except ArmError as exc:
            return False, f"could not clear the controller error: {exc}"
        deadline = self.clock() + 1.0
        remaining: tuple[int, ...] = ()
        while True:  # a pushed state may predate the clear: wait for one without errors
            try:
                remaining = tuple(code for code in self.arm.state().error_codes if code != 0)
            except ArmError as exc:
                return False, f"cleared, but the state could not be read back: {exc}"
            if not remaining or self.clock() > deadline:
                break
            time.sleep(0.01)
        if remaining:
            described = ", ".join(describe_controller_error(code) for code in remaining)
            return False, f"the controller still reports {described}; the latch stays"
        with self._lock:
            self._fault = ()
            self.controller.executor.cancel()  # the next chunk starts from the measured pose
        if not latched:
            return True, "no controller error was latched (controller error state cleared)"
        self._emit("info", "controller error cleared by the operator; chunks accepted again")
        return True, "controller error cleared"

    # -- chunks ---------------------------------------------------------------------------------

    def submit(self, *, trial_id: str, step_index: int, horizon: int, execute_steps: int, action_dim: int,
               action_space: str, data, stamp_ns: int = 0, frame_id: str = "", key_id: str = "", sequence: int = 0,
               signature: bytes = b"") -> Plan:
        """Authenticate (with a verifier), validate, safety-check and queue one chunk; raise
        ``ChunkRejected`` (nothing queued) otherwise.

        Only the cheap steps hold the lock the streaming tick takes: authentication and the gate,
        the snapshot the chunk is planned from, and the commit. The planning itself (Cartesian
        rules, rates, the joint checks of every set-point) runs under ``_planning`` alone, which
        serialises submits and which the tick never takes. The commit re-checks the gate and
        refuses a plan whose start went stale meanwhile (see ``_commit``)."""
        now = self.clock()
        try:
            with self._planning:
                with self._lock:
                    if self.verifier is not None:
                        self._authenticate(ChunkFields(
                            trial_id=trial_id, step_index=step_index, horizon=horizon, execute_steps=execute_steps,
                            action_dim=action_dim, action_space=action_space, data=data, stamp_ns=stamp_ns,
                            frame_id=frame_id), key_id, sequence, signature)
                    expected = self._gate(trial_id)
                    trial = self._trial
                chunk = validate_chunk(
                    trial_id=trial_id, step_index=step_index, horizon=horizon, execute_steps=execute_steps,
                    action_dim=action_dim, action_space=action_space, data=data,
                    expected_trial_id=expected, next_step=None,  # streaming: step indices are advisory
                )
                try:
                    state = self.arm.state()  # not under the lock: a real arm's read may wait for a gripper reply
                    with self._lock:
                        request = self.controller.prepare(now, state)
                    plan = self.controller.plan(chunk, request, self._yield_to_tick)  # costly: no lock the tick takes
                    with self._lock:
                        return self._commit(trial_id, trial, request, plan)
                except ArmConnectionError as exc:
                    raise ChunkRejected("not_connected", str(exc)) from exc
                except ArmError as exc:
                    raise ChunkRejected("arm_error", str(exc)) from exc
        except ChunkRejected as exc:
            with self._lock:
                if exc.reason in SIGNATURE_REASONS:
                    pass  # counted by _authenticate
                elif exc.reason in IGNORED_REASONS:
                    self._status.chunks_ignored += 1
                else:
                    self._status.chunks_rejected += 1
                    self._rejections[exc.reason] += 1
                    self._status.last_rejection = str(exc)
                    if self._trial_running:
                        self._status.trial_chunks_rejected += 1
            raise

    def _commit(self, trial_id: str, trial: tuple[str, int] | None, request, plan: Plan) -> Plan:
        """Queue a plan made outside the lock (held by the caller), unless the world moved on while it
        was planned: the gate again (e-stop, controller error, homing, link, trial over or replaced),
        the same announcement of the trial (``stale_trial`` if it was re-announced: a new attempt),
        and the executor's own check (``stale_plan``: the queued motion was dropped by a stop, the
        watchdog, a safety stop or a reconnect, or another chunk was queued)."""
        self._gate(trial_id)
        if self.settings.trial_gating and self._trial != trial:
            raise ChunkRejected("stale_trial", f"trial {trial_id!r} was announced again while the chunk was being planned")
        plan = self.controller.commit(request, plan, self.clock())
        self._status.chunks_accepted += 1
        if self._trial_running:
            self._status.trial_chunks_accepted += 1
        return plan

    def _authenticate(self, fields: ChunkFields, key_id: str, sequence: int, signature: bytes) -> None:
        try:
            self.verifier.verify(fields, key_id, sequence, signature)
        except SignatureRejected as exc:
            self._signature_rejections[exc.reason] += 1
            self._status.last_signature_rejection = str(exc)
            raise ChunkRejected(exc.reason, str(exc)) from None

    def _gate(self, trial_id: str) -> str | None:
        """The trial id a chunk must carry (None: any), or raise for states that refuse chunks."""
        if not self._connected:
            raise ChunkRejected("not_connected", "the arm is not connected (reconnecting)")
        if self._estop:
            raise ChunkRejected("emergency_stop", "emergency stop is latched; call the resume service first")
        if self._fault:
            described = ", ".join(describe_controller_error(code) for code in self._fault)
            raise ChunkRejected("controller_error", f"controller error {described} is latched; an operator must clear it "
                                                    f"(~/clear_error)")
        if self._homing:
            raise ChunkRejected("homing", "the arm is moving to its home posture")
        if not self.settings.trial_gating:
            return None
        if self._trial is None:
            raise ChunkRejected("no_trial", f"chunk for {trial_id!r} but no trial was announced on /gf/trial")
        if trial_id != self._trial[0]:
            raise ChunkRejected("stale_trial", f"chunk for {trial_id!r}, current trial {self._trial[0]!r}")
        if not self._trial_running:
            raise ChunkRejected("episode_done", f"trial {trial_id!r} has ended")
        return self._trial[0]

    # -- trials ---------------------------------------------------------------------------------

    def start_trial(self, trial_id: str, stamp_ns: int = 0) -> None:
        """A trial was announced (a re-announcement with a newer stamp starts a new attempt)."""
        with self._lock:
            if self._trial == (trial_id, stamp_ns):
                return
            if self._trial is not None and self._trial_running:
                self._halt_locked()
            self._trial = (trial_id, int(stamp_ns))
            # A "done" status stamped at or after this announcement (late-joining latched
            # messages may arrive in either order) means this attempt is already over.
            self._trial_running = self._done.get(trial_id, -1) < int(stamp_ns)
            self._status.trial_chunks_accepted = 0
            self._status.trial_chunks_rejected = 0

    def end_trial(self, trial_id: str, stamp_ns: int = 0) -> None:
        """The trial's episode is done: stop motion and ignore its further chunks."""
        with self._lock:
            self._done[trial_id] = max(self._done.get(trial_id, -1), int(stamp_ns))
            if self._trial is not None and self._trial[0] == trial_id and stamp_ns >= self._trial[1] and self._trial_running:
                self._trial_running = False
                self._halt_locked()

    def _halt_locked(self) -> None:
        try:
            if self._connected:
                self.controller.halt()
        except ArmConnectionError as exc:
            self._connection_lost(exc)
        except ArmError as exc:
            self._emit("error", f"stopping the arm failed: {exc}")

    # -- operator services ----------------------------------------------------------------------

    def emergency_stop(self) -> tuple[bool, str]:
        """Stop now and latch; (ok, message). The latch holds even when the arm call fails."""
        self._estop = True
        with self._lock:
            self.controller.executor.cancel()
            self.controller.watchdog.disarm()
            self.controller.gripper.reset()
        try:
            self.arm.emergency_stop()
        except ArmError as exc:
            self._emit("error", f"emergency stop: {exc}")
            return False, f"software latch set, but the arm call failed: {exc} (use the hardware e-stop)"
        self._emit("warning", "EMERGENCY STOP: arm stopped; chunks are refused until resume")
        return True, "emergency stop latched"

    def resume(self) -> tuple[bool, str]:
        """Release the e-stop latch (the arm does not move by itself)."""
        if not self._estop:
            return True, "not emergency-stopped"
        try:
            self.arm.clear_emergency()
        except ArmError as exc:
            return False, f"could not clear the emergency stop: {exc}"
        with self._lock:
            self.controller.executor.cancel()  # the next chunk starts from the measured pose
            self._estop = False
        self._emit("info", "emergency stop released; chunks accepted again")
        return True, "resumed"

    def home(self) -> tuple[bool, str]:
        """Planned joint move to ``home_joints`` (blocking; streaming paused), then open the gripper."""
        home = self.settings.home_joints
        if home is None:
            return False, "no home posture configured"
        with self._lock:
            if not self._connected:
                return False, "the arm is not connected"
            if self._estop:
                return False, "emergency stop is latched; resume first"
            if self._fault:
                return False, "a controller error is latched; clear it first"
            if self._homing:
                return False, "already homing"
            self._homing = True
            self._halt_locked()
        try:
            self._lift_to_safe_height()
            self.arm.move_joints(np.asarray(home, dtype=np.float64), speed=self.settings.home_speed,
                                 timeout=self.settings.home_timeout)
            self.arm.gripper_open()
        except ArmError as exc:
            if self._stop.is_set():  # shutdown() closed the link under the move: stopped, not failed
                return False, "homing stopped: the driver is shutting down"
            return False, f"homing failed: {exc}"
        finally:
            with self._lock:
                self.controller.executor.cancel()
                self._homing = False
        return True, "at home"

    def _lift_to_safe_height(self) -> None:
        """Straight up to ``home_safe_z`` (x, y and orientation kept) with smoothed set-points, so the
        joint move to home never sweeps the gripper through the table or the cards."""
        safe_z = self.settings.home_safe_z
        if safe_z is None:
            return
        state = self.arm.state()
        if state.ee_xyz[2] >= safe_z:
            return
        period = self.controller.executor.planner.stream_period
        smoother = SetpointSmoother(period, self.settings.motion_limits or MotionLimits())
        smoother.reset(state.ee_xyz, state.ee_rpy)
        target = np.array([state.ee_xyz[0], state.ee_xyz[1], safe_z])
        try:
            self.controller.executor.planner.limits.check_pose(target, state.ee_rpy)
        except SafetyViolation as exc:
            raise ArmError(f"cannot lift to the safe height {safe_z} m: {exc.detail}") from exc
        loop_deadline = self.clock() + self.settings.home_timeout

        def lift(now: float) -> bool:
            if self._estop or self._fault:
                raise ArmError("lift interrupted (emergency stop or controller error)")
            xyz, rpy = smoother.step(target, state.ee_rpy)
            self.arm.stream_ee_target(xyz, rpy)
            if smoother.at_rest_at(target, state.ee_rpy):
                return False
            if now > loop_deadline:
                raise ArmError(f"lift to the safe height did not finish within {self.settings.home_timeout:.0f} s")
            return True

        PeriodicLoop(period).run(lift)
        deadline = self.clock() + 5.0
        while self.clock() < deadline:  # let the arm arrive before the joint move replaces the stream
            if abs(self.arm.state().ee_xyz[2] - safe_z) < 2e-3:
                break
            time.sleep(0.01)

    # -- status ---------------------------------------------------------------------------------

    def status(self) -> DriverStatus:
        """A copy of the current status."""
        with self._lock:
            s = DriverStatus(**asdict(self._status))
            s.connected = self._connected
            s.emergency_stopped = self._estop
            s.homing = self._homing
            s.motion_active = self.controller.executor.active
            s.trial_id = self._trial[0] if self._trial else ""
            s.trial_running = self._trial_running
            s.rejections = dict(self._rejections)
            s.signed_commands_required = self.verifier is not None
            s.signature_rejections = dict(self._signature_rejections)
            s.watchdog_fired = self.controller.watchdog.fired_count
            s.setpoints_sent = self.controller.setpoints_sent
            s.motion_active = self.controller.moving
            s.controller_error = bool(self._fault)
            s.controller_errors = [describe_controller_error(code) for code in self._fault]
            state = self._state
            s.controller_errors_now = state.describe_errors() if state is not None else []
            s.state_age_s = round(self.clock() - self._state_read_at, 4) if state is not None else -1.0
            s.smoother_restarts = self.controller.restarts
            return s
