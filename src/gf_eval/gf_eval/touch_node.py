"""touch_eval node: the real-robot "Touch [desc.]" evaluation with an operator in the loop.

For every pending trial (``gf_eval.touch``: Val emojis, seeded, cards at the calibrated slots):

1. the arm goes home (the driver's ``~/home``), the operator is told which card goes on which
   slot (terminal text, ``~/prompt``, and a PNG preview of the three cards in ``previews/``) and
   confirms when the cards lie there;
2. the trial is announced on /gf/trial (the policy starts acting, the driver accepts its chunks)
   and /gf/episode_status says it is running;
3. the trial is scored automatically at the first gripper close seen on /gf/ee_state
   (``TouchMonitor``), or ends after ``max_trial_s`` without one; /gf/episode_status then says
   done, which makes the driver stop the arm and ignore further chunks of the trial;
4. the operator accepts the score or overrides the touched card (or voids the attempt: logged
   in ``voided.jsonl``, the trial runs again); the record goes to ``results.jsonl`` (fsynced,
   resumable) and /gf/trial_result.

At the end the report folder is written and the table printed, as in the simulated evaluation.

Operator input: keys on this node's terminal (``console``), and commands on ``~/operator``
(std_msgs/String: ``confirm``, ``override 1``, ``override none``, ``void``, ``estop``,
``resume``, ``quit``), which ``gf-touch-operator`` sends from any terminal (e.g. when the node
runs under ``ros2 launch`` and has no terminal of its own). ``auto_confirm`` runs unattended
(dry runs, tests): set-ups are confirmed and automatic scores accepted.
"""

from __future__ import annotations

import json
import os
import queue
import select
import sys
import termios
import threading
import time
from dataclasses import dataclass

from rclpy.node import Node
from std_msgs.msg import String

from gf_bringup import names
from gf_bringup.constants import CONTROL_RATE_HZ, DEFAULT_SPLIT
from gf_bringup.rosutil import (
    config_field,
    config_help,
    create_publisher,
    create_subscription,
    declare_config,
    latched_qos,
    reliable_qos,
    run_node,
    status_qos,
)
from gf_eval.evaluation import package_versions
from gf_eval.evaluation_loop import EvaluationLoop
from gf_eval.results import TrialRecord
from gf_eval.ros_msgs import result_to_msg, trial_to_msg
from gf_eval.touch import (
    CONFIRM,
    ESTOP,
    HELP,
    OPERATOR_HELP,
    QUIT,
    RESUME,
    TOUCH_TEMPLATE,
    VOID,
    TouchEvaluation,
    TouchMonitor,
    TouchScore,
    card_distances,
    load_layout,
    override_card,
    parse_command,
    review_text,
    setup_text,
)
from gf_interfaces.msg import EeState, EpisodeStatus, Trial, TrialResult


@dataclass
class TouchEvalConfig:
    output_dir: str = config_field("outputs/touch_eval", "directory of results.jsonl, run.json, voided.jsonl, previews/ and report/ (resumed)")
    policy: str = config_field("vla", "name of the evaluated policy (recorded in run.json; must match on resume)")
    checkpoint: str = config_field("", "checkpoint of the evaluated policy (recorded in run.json)")
    trials: int = config_field(30, "number of Touch trials")
    first_index: int = config_field(0, "index of the first trial")
    seed: int = config_field(0, "base seed (Touch trial i shows the emojis and target of Val trial i)")
    split: str = config_field(DEFAULT_SPLIT, "emoji split file (name or path)")
    layout_file: str = config_field("calibration/touch_layout.yaml", "Touch layout YAML written by gf-calibrate")
    robot: str = config_field("rm75", "robot (recorded in run.json)")
    template: str = config_field(TOUCH_TEMPLATE, "instruction template with {desc}")
    max_trial_s: float = config_field(60.0, "a trial without a gripper close ends after this many seconds (nothing touched)")
    close_fraction: float = config_field(0.5, "gripper opening / max below which the gripper counts as closed")
    open_fraction: float = config_field(0.8, "gripper opening / max above which it counts as open (a close must follow an open)")
    console: str = config_field("auto", "operator input on this process: auto (keys, if stdin is a terminal), stdin (keys, or one command per line from a pipe), disabled")
    auto_confirm: bool = config_field(False, "unattended: confirm every set-up and accept every automatic score (dry runs)")
    driver: str = config_field(names.DRIVER, "node name of the arm driver, relative to this node's namespace (its ~/home, ~/emergency_stop, ~/resume, ~/status)")
    home_between_trials: bool = config_field(True, "send the arm home before each trial's set-up")
    home_timeout_s: float = config_field(60.0, "seconds to wait for the driver's ~/home")
    startup_timeout_s: float = config_field(120.0, "seconds to wait for the driver's EE state and a policy")
    force: bool = config_field(False, "start over in output_dir even if it holds a different run")


class TerminalKeys:
    """Single key presses from a terminal (cbreak, no echo), restored on ``close``."""

    def __init__(self, fd: int):
        self.fd = fd
        self._saved = termios.tcgetattr(fd)
        attrs = termios.tcgetattr(fd)
        attrs[3] &= ~(termios.ICANON | termios.ECHO)
        attrs[6][termios.VMIN], attrs[6][termios.VTIME] = 0, 0
        termios.tcsetattr(fd, termios.TCSANOW, attrs)

    def read(self, timeout: float) -> str:
        """Whatever was typed within ``timeout`` s ('' if nothing)."""
        if not select.select([self.fd], [], [], timeout)[0]:
            return ""
        return os.read(self.fd, 64).decode("utf-8", "ignore")

    def close(self) -> None:
        try:
            termios.tcsetattr(self.fd, termios.TCSANOW, self._saved)
        except termios.error:
            pass


class TouchEvalNode(EvaluationLoop, Node):
    """The Touch evaluation loop (own thread) around ``TouchEvaluation`` and ``TouchMonitor``."""

    def __init__(self, **node_kwargs):
        super().__init__("touch_eval", **node_kwargs)
        self.cfg = declare_config(self, TouchEvalConfig)
        self.layout = load_layout(self.cfg.layout_file)
        self.evaluation = TouchEvaluation(
            self.cfg.output_dir, self.cfg.policy, self.layout, trials=self.cfg.trials, first_index=self.cfg.first_index,
            base_seed=self.cfg.seed, split=self.cfg.split, checkpoint=self.cfg.checkpoint, robot=self.cfg.robot,
            template=self.cfg.template, package_versions=package_versions(), force=self.cfg.force,
            extra={"layout_file": os.path.abspath(self.cfg.layout_file)},
        )
        from gf_interfaces.srv import Command  # the driver's command services (see driver_node)

        self._srv_type = Command
        driver = self.cfg.driver.rstrip("/")
        self.client_home = self.create_client(Command, f"{driver}/home")
        self.client_estop = self.create_client(Command, f"{driver}/emergency_stop")
        self.client_resume = self.create_client(Command, f"{driver}/resume")
        self.pub_trial = create_publisher(self, Trial, names.TRIAL, latched_qos(1))
        self.pub_status = create_publisher(self, EpisodeStatus, names.EPISODE_STATUS, status_qos())
        self.pub_result = create_publisher(self, TrialResult, names.TRIAL_RESULT, reliable_qos())
        self.pub_prompt = create_publisher(self, String, "~/prompt", latched_qos(1))
        create_subscription(self, EeState, names.EE_STATE, self._on_ee, reliable_qos())
        create_subscription(self, String, "~/operator", lambda m: self._command(m.data, "topic"), reliable_qos())
        create_subscription(self, String, f"{driver}/status", self._on_driver_status, latched_qos(1))
        self._cond = threading.Condition()
        self._commands: queue.Queue[str] = queue.Queue()
        self._monitor: TouchMonitor | None = None
        self._running = None  # TrialSpec of the trial in progress
        self._started = 0.0
        self._ee_seen = False
        self._driver_status: dict = {}
        self._keys: TerminalKeys | None = None
        self._stop = threading.Event()
        self._start_console()
        self.start_loop("touch evaluation")

    # --- operator input ---------------------------------------------------------------------

    def _start_console(self) -> None:
        mode = self.cfg.console
        if mode not in ("auto", "stdin", "disabled"):
            raise ValueError(f"console must be auto, stdin or disabled, got {mode!r}")
        if mode == "disabled" or self.cfg.auto_confirm:
            return
        tty = sys.stdin is not None and sys.stdin.isatty()
        if tty:
            self._keys = TerminalKeys(sys.stdin.fileno())
            threading.Thread(target=self._read_keys, name="operator-keys", daemon=True).start()
        elif mode == "stdin":
            threading.Thread(target=self._read_lines, name="operator-lines", daemon=True).start()

    def _read_keys(self) -> None:
        while not self._stop.is_set():
            for key in self._keys.read(0.1):
                self._command(key, "key")

    def _read_lines(self) -> None:
        for line in sys.stdin:
            self._command(line.strip() or "\n", "stdin")

    def _command(self, text: str, origin: str) -> None:
        command = parse_command(text)
        if command is None:
            if origin != "key":
                self.get_logger().warning(f"unknown operator command {text!r} (h = help)")
            return
        if command in (ESTOP, RESUME):
            # Off the executor thread: waiting here for the answer would block the executor that delivers it.
            client, what = (self.client_estop, "emergency stop") if command == ESTOP else (self.client_resume, "resume")
            threading.Thread(target=self._call_driver, args=(client, what), name=what, daemon=True).start()
        elif command == HELP:
            self._say(OPERATOR_HELP)
        else:
            self._commands.put(command)
            with self._cond:
                self._cond.notify_all()

    def _next_command(self, timeout: float) -> str | None:
        try:
            return self._commands.get(timeout=timeout)
        except queue.Empty:
            return None

    def _wait_command(self, allowed: set[str], allow_override: bool = False) -> str:
        while not self._stop.is_set():
            command = self._next_command(0.2)
            if command is None:
                continue
            if command in allowed or (allow_override and override_card(command) is not None):
                return command
            self._say(f"('{command}' does nothing now; h = help)")
        return QUIT

    def _drain_commands(self) -> None:
        while self._next_command(0.0) is not None:
            pass

    def _say(self, text: str) -> None:
        print(text, flush=True)
        self.pub_prompt.publish(String(data=text))

    def _call_driver(self, client, what: str, timeout: float = 5.0) -> bool:
        if not client.wait_for_service(timeout_sec=min(2.0, timeout)):
            self._say(f"{what}: the driver's service {client.srv_name} is not available")
            return False
        future = client.call_async(self._srv_type.Request())
        deadline = time.monotonic() + timeout
        while not future.done() and time.monotonic() < deadline:
            time.sleep(0.01)
        ok = future.done() and future.result() is not None and future.result().success
        self._say(f"{what}: {'done' if ok else 'FAILED (see the driver log)'}")
        return bool(ok)

    # --- robot input --------------------------------------------------------------------------

    def _on_ee(self, msg: EeState) -> None:
        self._ee_seen = True
        with self._cond:
            monitor = self._monitor
            if monitor is None:
                return
            p = msg.pose.position
            if monitor.update(time.monotonic() - self._started, (p.x, p.y, p.z), float(msg.proprio[6])) is not None:
                self._cond.notify_all()

    def _on_driver_status(self, msg: String) -> None:
        try:
            self._driver_status = json.loads(msg.data)
        except json.JSONDecodeError:
            pass

    # --- the evaluation loop --------------------------------------------------------------------

    def _wait_for_graph(self) -> bool:
        deadline = time.monotonic() + self.cfg.startup_timeout_s
        while not self._ee_seen:
            if time.monotonic() > deadline:
                self.get_logger().error(f"no /gf/ee_state within {self.cfg.startup_timeout_s:g} s: is the arm driver running and connected?")
                return False
            time.sleep(0.05)
        while self.count_publishers(names.ACTION_CHUNK) == 0:
            if time.monotonic() > deadline:
                self.get_logger().error("no policy publishes /gf/action_chunk")
                return False
            time.sleep(0.05)
        return True

    def _run(self) -> int:
        ev = self.evaluation
        pending = ev.pending()
        self.get_logger().info(
            f"Touch evaluation: {len(ev.plan)} trials planned, {len(ev.done)} already in {ev.config.output_dir}, "
            f"{len(pending)} to run; layout {self.cfg.layout_file} ({self.layout.created or 'no timestamp'})"
        )
        if pending and not self._wait_for_graph():
            return 3
        if pending and not self.cfg.auto_confirm:
            self._say(OPERATOR_HELP)
        stopped = False
        for spec in pending:
            attempt = 0
            while True:
                attempt += 1
                outcome = self._run_trial(spec, attempt)
                if isinstance(outcome, TrialRecord):
                    ev.record(outcome)
                    self.pub_result.publish(result_to_msg(outcome, self.get_clock().now().to_msg()))
                    self.get_logger().info(
                        f"{ev.progress_line()}  last: {outcome.trial_id} placed={outcome.placed_card} "
                        f"target={outcome.target_index} ({outcome.end_reason})"
                    )
                    break
                if outcome == QUIT:
                    stopped = True
                    break
            if stopped or self._stop.is_set():
                break
        if ev.done:
            report = ev.finish()
            print("\n" + ev.results_table() + f"\nreport: {report}\n", flush=True)
        if not ev.complete:
            self._say(f"stopped with {len(ev.pending())} trial(s) left; start again with the same output_dir to resume")
            return 5
        return 0

    def _home(self) -> None:
        if not self.cfg.home_between_trials:
            return
        if not self.client_home.wait_for_service(timeout_sec=2.0):
            self._say("(the driver has no ~/home service; move the arm clear of the cards by hand)")
            return
        self._call_driver(self.client_home, "arm home", timeout=self.cfg.home_timeout_s)

    def _publish_status(self, spec, done: bool, reason: str, placed: int = -1, ee_xyz=None) -> None:
        msg = EpisodeStatus()
        msg.header.stamp = self.get_clock().now().to_msg()
        msg.trial_id = spec.trial_id
        msg.step = int((time.monotonic() - self._started) * CONTROL_RATE_HZ) if self._started else 0
        msg.done, msg.reason, msg.placed_card = done, reason, int(placed)
        msg.success = placed >= 0 and placed == spec.target_index
        msg.upstream_success = msg.success
        msg.cube_released, msg.arm_still = True, True
        if ee_xyz is not None and all(v == v for v in ee_xyz):
            msg.card_distances = [float(d) for d in card_distances(spec, ee_xyz)]
        driver = self._driver_status
        msg.chunks_executed = int(driver.get("trial_chunks_accepted", 0))
        msg.chunks_rejected = int(driver.get("trial_chunks_rejected", 0))
        msg.last_rejection = str(driver.get("last_rejection", ""))
        self.pub_status.publish(msg)

    def _run_trial(self, spec, attempt: int):
        """One attempt: a TrialRecord, VOID (run it again) or QUIT."""
        ev = self.evaluation
        self._drain_commands()
        self._home()
        position = (len(ev.done) + 1, len(ev.plan))
        self._say(setup_text(spec, self.layout, position, ev.preview_path(spec)) + (f"  [attempt {attempt}]" if attempt > 1 else ""))
        if not self.cfg.auto_confirm and self._wait_command({CONFIRM, QUIT}) == QUIT:
            return QUIT
        monitor = TouchMonitor(self.layout, self.cfg.close_fraction, self.cfg.open_fraction)
        started_wall = time.monotonic()
        with self._cond:
            self._started = started_wall
            self._monitor, self._running = monitor, spec
        self.pub_trial.publish(trial_to_msg(spec, self.get_clock().now().to_msg(),
                                            max_steps=int(self.cfg.max_trial_s * CONTROL_RATE_HZ), control_rate_hz=CONTROL_RATE_HZ))
        self._publish_status(spec, False, "running")
        self._say(f"{spec.trial_id} running: \"{spec.instruction}\" (scored at the first gripper close; "
                  "0/1/2/n = score by hand, v = void, e/space = emergency stop)")
        score: TouchScore | None = None
        manual: int | None = None
        command: str | None = None
        with self._cond:
            while True:
                score = monitor.score
                if score is not None:
                    break
                elapsed = time.monotonic() - started_wall
                if elapsed >= self.cfg.max_trial_s:
                    score = monitor.finish(elapsed)
                    break
                try:
                    command = self._commands.get_nowait()
                except queue.Empty:
                    command = None
                if command is not None and (command in (VOID, QUIT) or override_card(command) is not None):
                    score = monitor.finish(elapsed)
                    break
                self._cond.wait(timeout=0.05)
            self._monitor, self._running = None, None
        end_reason = "gripper_closed" if score.closed else "timeout"
        if command is not None and override_card(command) is not None:
            manual, end_reason = override_card(command), "operator_scored"
        placed = manual if manual is not None else score.touched_card
        self._publish_status(spec, True, end_reason, placed, score.ee_xyz)  # the driver stops the arm
        if command in (VOID, QUIT):
            ev.log_void(spec, "operator" if command == VOID else "operator quit", {"attempt": attempt, "elapsed_s": round(score.time, 2)})
            self._say(f"{spec.trial_id}: attempt voided" + (" (it runs again)" if command == VOID else ""))
            return command
        note = ""
        if manual is None:
            self._say(review_text(spec, self.layout, score))
            decision = CONFIRM if self.cfg.auto_confirm else self._wait_command({CONFIRM, VOID, QUIT}, allow_override=True)
            if decision == VOID:
                ev.log_void(spec, "operator (after the score)", {"attempt": attempt, "auto_touched_card": score.touched_card})
                self._say(f"{spec.trial_id}: attempt voided, it runs again")
                return VOID
            if decision == QUIT:
                self._stop.set()  # accept this score, then stop
            elif override_card(decision) is not None and override_card(decision) != score.touched_card:
                manual = override_card(decision)
                note = f"operator override: automatic {score.touched_card} -> {manual}"
                placed = manual
        else:
            note = f"operator scored during the run: {manual} (automatic would be {score.touched_card})"
        steps = int(round(score.time * CONTROL_RATE_HZ))
        driver = self._driver_status
        return TrialRecord.score(
            spec, placed_card=placed, upstream_success=(placed >= 0 and placed == spec.target_index), end_reason=end_reason,
            steps=steps, wall_time=time.monotonic() - started_wall, chunks_rejected=int(driver.get("trial_chunks_rejected", 0)),
            operator_note=note,
            extra={
                "auto_touched_card": score.touched_card, "over_card": score.over_card,
                "height_above_card": None if score.height_above_card != score.height_above_card else round(score.height_above_card, 4),
                "ee_xyz": [round(v, 4) for v in score.ee_xyz] if all(v == v for v in score.ee_xyz) else None,  # no NaN in JSON
                "close_time_s": round(score.time, 3), "gripper_closed": score.closed,
                "overridden": manual is not None, "attempt": attempt, "layout_hash": self.layout.hash,
                "chunks_accepted": int(driver.get("trial_chunks_accepted", 0)),
            },
        )

    def close(self) -> None:
        """End a running trial for the driver (it stops the arm) and restore the terminal."""
        self._stop.set()
        self.stopped_from_outside()
        with self._cond:
            spec, self._monitor = self._running, None
        if spec is not None:
            try:
                self._publish_status(spec, True, "aborted")
            except Exception:  # noqa: BLE001 - the context may already be gone; the driver stops on its own shutdown
                pass
        if self._keys is not None:
            self._keys.close()


class OperatorConsoleNode(Node):
    """``gf-touch-operator``: the Touch operator's keys from this terminal -> the eval node's ~/operator;
    its prompts printed here (for an eval node without a terminal, e.g. under ``ros2 launch``)."""

    def __init__(self, **node_kwargs):
        super().__init__("touch_operator", **node_kwargs)
        target = self.declare_parameter("eval_node", "/touch_eval").value.rstrip("/")
        self.pub = create_publisher(self, String, f"{target}/operator", reliable_qos())
        create_subscription(self, String, f"{target}/prompt", lambda m: print(m.data, flush=True), latched_qos(1))
        if not sys.stdin.isatty():
            raise RuntimeError("gf-touch-operator needs a terminal (it reads single key presses)")
        self._keys = TerminalKeys(sys.stdin.fileno())
        self.create_timer(0.05, self._poll)
        print(f"operator console for {target} (h = help, Ctrl-C = leave)\n{OPERATOR_HELP}", flush=True)

    def _poll(self) -> None:
        for key in self._keys.read(0.0):
            command = parse_command(key)
            if command is not None:
                self.pub.publish(String(data=command))

    def close(self) -> None:
        self._keys.close()


def main(args=None) -> int:
    return run_node(TouchEvalNode, args, help_text=f"gf-touch-eval --ros-args [-p name:=value ...]\n\n{OPERATOR_HELP}\n\nparameters:\n{config_help(TouchEvalConfig)}")


def operator_main(args=None) -> int:
    return run_node(OperatorConsoleNode, args, help_text="gf-touch-operator [--ros-args -p eval_node:=/touch_eval]\n\n" + OPERATOR_HELP)
