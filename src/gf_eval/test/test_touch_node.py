"""The Touch eval node over DDS against a scripted robot and operator.

The test process plays the arm driver (publishes /gf/ee_state, its status, serves ~/home) and the
operator (commands on /touch_eval/operator, prompts read from /touch_eval/prompt): a touch on the
target card, on another card (then overridden by the operator), between two cards, and an attempt
voided mid-run and repeated. The node must score each automatically at the gripper close, end the
episode on /gf/episode_status, honour the operator and leave the same results/report as the sim.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gf_bringup import names
from gf_eval.results import ResultsFile
from gf_eval.splits import load_splits
from gf_eval.touch import CardSlot, TouchLayout, make_touch_trial

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent
LAYOUT = TouchLayout(slots=(CardSlot(0.35, 0.16, 0.08), CardSlot(0.35, 0.0, 0.08), CardSlot(0.35, -0.16, 0.08)),
                     created="2025-03-01T10:00:00+01:00", source="test")


class RobotAndOperator:
    """A stand-in for the arm driver plus an operator typing commands."""

    def __init__(self):
        import rclpy
        from std_msgs.msg import String

        from gf_bringup.rosutil import latched_qos, multi_threaded_executor, reliable_qos
        from gf_interfaces.msg import ActionChunk, EeState, EpisodeStatus, Trial, TrialResult
        from gf_interfaces.srv import Command

        self.rclpy, self.String, self.EeState = rclpy, String, EeState
        self.context = rclpy.Context()
        rclpy.init(context=self.context)
        self.node = rclpy.create_node("robot_and_operator", context=self.context)
        self.cond = threading.Condition()
        self.xyz, self.gripper = (0.28, 0.0, 0.25), 1.0
        self.prompts: list[str] = []
        self.trials: list = []
        self.done: list = []
        self.results: list = []
        self.home_calls = 0
        self.pub_ee = self.node.create_publisher(EeState, names.EE_STATE, reliable_qos())
        self.pub_operator = self.node.create_publisher(String, "/touch_eval/operator", reliable_qos())
        self.pub_status = self.node.create_publisher(String, "/realman_driver/status", latched_qos(1))
        self.node.create_publisher(ActionChunk, names.ACTION_CHUNK, reliable_qos())  # "a policy is there"
        self.node.create_subscription(String, "/touch_eval/prompt", lambda m: self._add(self.prompts, m.data), latched_qos(1))
        self.node.create_subscription(Trial, names.TRIAL, lambda m: self._add(self.trials, m), latched_qos(1))
        self.node.create_subscription(EpisodeStatus, names.EPISODE_STATUS,
                                      lambda m: m.done and self._add(self.done, m), latched_qos(1))
        self.node.create_subscription(TrialResult, names.TRIAL_RESULT, lambda m: self._add(self.results, m), reliable_qos(20))
        self.node.create_service(Command, "/realman_driver/home", self._home)
        self.driver_calls: list[str] = []
        for name in ("emergency_stop", "resume"):
            self.node.create_service(Command, f"/realman_driver/{name}",
                                     lambda req, res, name=name: (self._add(self.driver_calls, name), setattr(res, "success", True), res)[2])
        self.node.create_timer(0.02, self._publish_ee)
        self.pub_status.publish(String(data=json.dumps({"trial_chunks_accepted": 7, "trial_chunks_rejected": 1})))
        self.executor = multi_threaded_executor(2, context=self.context)
        self.executor.add_node(self.node)
        threading.Thread(target=self.executor.spin, daemon=True).start()

    def _add(self, bucket: list, item) -> None:
        with self.cond:
            bucket.append(item)
            self.cond.notify_all()

    def _home(self, request, response):  # noqa: ARG002
        self.home_calls += 1
        self.xyz, self.gripper = (0.28, 0.0, 0.25), 1.0
        response.success = True
        return response

    def _publish_ee(self) -> None:
        msg = self.EeState()
        msg.header.stamp = self.node.get_clock().now().to_msg()
        msg.pose.position.x, msg.pose.position.y, msg.pose.position.z = self.xyz
        msg.gripper_opening, msg.gripper_opening_max = 0.08 * self.gripper, 0.08
        msg.proprio = [*self.xyz, 3.14, 0.0, 3.14, self.gripper]
        self.pub_ee.publish(msg)

    def wait(self, bucket: list, predicate, timeout: float = 30.0, start: int = 0):
        with self.cond:
            ok = self.cond.wait_for(lambda: any(predicate(x) for x in bucket[start:]), timeout)
            assert ok, f"timed out; prompts so far: {self.prompts[-4:]}; trials: {[t.trial_id for t in self.trials]}"
            return next(x for x in bucket[start:] if predicate(x))

    def say(self, command: str) -> None:
        self.pub_operator.publish(self.String(data=command))

    def touch(self, xyz) -> None:
        """Move there (the node sees a few states), then close the gripper."""
        self.xyz = xyz
        time.sleep(0.25)
        self.gripper = 0.2

    def start_trial(self, trial_id: str, attempt: int = 1):
        """Wait for the set-up prompt of ``trial_id``, confirm, and return its announcement."""
        self.wait(self.prompts, lambda p: f"Trial {trial_id}" in p and "Press Enter" in p and
                  ("[attempt" not in p if attempt == 1 else f"[attempt {attempt}]" in p))
        announced = len(self.trials)
        self.say("confirm")
        return self.wait(self.trials, lambda t: t.trial_id == trial_id, start=announced)

    def close(self) -> None:
        self.executor.shutdown()
        self.node.destroy_node()
        self.rclpy.try_shutdown(context=self.context)


def test_scoring_override_and_void_through_the_node(tmp_path, fresh_domain):
    layout_file = LAYOUT.save(tmp_path / "layout.yaml")
    out = tmp_path / "touch"
    specs = [make_touch_trial(i, 0, load_splits(), LAYOUT) for i in range(4)]
    slot = lambda k: (LAYOUT.slots[k].x, LAYOUT.slots[k].y, LAYOUT.slots[k].z + 0.005)  # noqa: E731
    robot = RobotAndOperator()
    node = subprocess.Popen(
        [str(BIN / "gf-touch-eval"), "--ros-args", "-p", f"layout_file:={layout_file}", "-p", f"output_dir:={out}",
         "-p", "trials:=4", "-p", "console:=disabled", "-p", "max_trial_s:=20.0", "-p", "policy:=scripted"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True, stdin=subprocess.DEVNULL,
    )
    try:
        # 1. The right card: scored as a success and accepted.
        t = specs[0].target_index
        robot.start_trial(specs[0].trial_id)
        robot.touch(slot(t))
        done = robot.wait(robot.done, lambda s: s.trial_id == specs[0].trial_id)
        assert done.placed_card == t and done.success and done.reason == "gripper_closed" and done.chunks_rejected == 1
        robot.wait(robot.prompts, lambda p: p.startswith(specs[0].trial_id) and "SUCCESS" in p)
        robot.say("accept")
        robot.wait(robot.results, lambda r: r.trial_id == specs[0].trial_id and r.success)

        # 2. Another card: scored as wrong; the operator overrides (e.g. the card had slipped).
        t = specs[1].target_index
        robot.start_trial(specs[1].trial_id)
        robot.touch(slot((t + 1) % 3))
        done = robot.wait(robot.done, lambda s: s.trial_id == specs[1].trial_id)
        assert done.placed_card == (t + 1) % 3 and not done.success
        robot.wait(robot.prompts, lambda p: p.startswith(specs[1].trial_id) and "wrong card" in p)
        robot.say(f"override {t}")
        robot.wait(robot.results, lambda r: r.trial_id == specs[1].trial_id)

        # 3. Between two cards: not executed.
        robot.start_trial(specs[2].trial_id)
        robot.touch((0.35, 0.08, 0.085))
        done = robot.wait(robot.done, lambda s: s.trial_id == specs[2].trial_id)
        assert done.placed_card == -1 and not done.success
        robot.wait(robot.prompts, lambda p: p.startswith(specs[2].trial_id) and "over no card" in p)
        robot.say("accept")

        # 4. Voided mid-run (logged), then run again and scored.
        first = robot.start_trial(specs[3].trial_id)
        robot.say("void")
        robot.wait(robot.prompts, lambda p: "attempt voided (it runs again)" in p)
        second = robot.start_trial(specs[3].trial_id, attempt=2)
        assert (second.header.stamp.sec, second.header.stamp.nanosec) > (first.header.stamp.sec, first.header.stamp.nanosec)
        robot.touch(slot(specs[3].target_index))
        robot.wait(robot.prompts, lambda p: p.startswith(specs[3].trial_id) and "SUCCESS" in p)
        robot.say("estop")  # the operator's e-stop and resume keys reach the driver's services
        robot.wait(robot.prompts, lambda p: p == "emergency stop: done")
        robot.say("resume")
        robot.wait(robot.prompts, lambda p: p == "resume: done")
        assert robot.driver_calls == ["emergency_stop", "resume"]
        robot.say("accept")
        output, _ = node.communicate(timeout=60)
    finally:
        if node.poll() is None:
            os.killpg(node.pid, signal.SIGINT)
            print(node.communicate(timeout=10)[0][-4000:])
        robot.close()
    assert node.returncode == 0, output[-4000:]
    records = ResultsFile(out).read()
    assert [r.trial_id for r in records] == [s.trial_id for s in specs]
    right, overridden, between, repeated = records
    assert right.success and right.operator_note == "" and right.chunks_rejected == 1 and right.extra["chunks_accepted"] == 7
    assert overridden.success and overridden.extra["overridden"] and overridden.extra["auto_touched_card"] == (specs[1].target_index + 1) % 3
    assert "operator override" in overridden.operator_note
    assert not between.executed and between.placed_card == -1
    assert repeated.success and repeated.extra["attempt"] == 2
    voided = [json.loads(line) for line in (out / "voided.jsonl").read_text().splitlines()]
    assert [v["trial_id"] for v in voided] == [specs[3].trial_id]
    assert robot.home_calls >= 5  # before every set-up, the repeated one included
    assert "| Touch | 4 |" in (out / "report" / "summary.md").read_text() and "| Touch | 4 |" in output


def test_the_operator_console_relays_keys_and_prints_prompts(fresh_domain):
    """`gf-touch-operator` in a terminal: keys become commands on ~/operator, prompts are printed."""
    pexpect = pytest.importorskip("pexpect")
    robot = RobotAndOperator()  # here only as a listener on the eval node's topics
    from std_msgs.msg import String

    from gf_bringup.rosutil import latched_qos, reliable_qos

    commands: list[str] = []
    robot.node.create_subscription(String, "/touch_eval/operator", lambda m: robot._add(commands, m.data), reliable_qos())
    prompt = robot.node.create_publisher(String, "/touch_eval/prompt", latched_qos(1))
    child = pexpect.spawn(str(BIN / "gf-touch-operator"), encoding="utf-8", timeout=30, env=dict(os.environ))
    try:
        child.expect("operator console for /touch_eval")
        deadline = time.monotonic() + 20
        while not commands and time.monotonic() < deadline:  # until the console's publisher is matched
            child.send("y")
            time.sleep(0.2)
        time.sleep(0.3)
        assert set(commands) == {"confirm"}
        start = len(commands)
        for key in ("\r", "2", "n", "v", "x"):
            child.send(key)
        robot.wait(commands, lambda c: c == "void", timeout=20, start=start)
        assert commands[start:] == ["confirm", "override:2", "override:none", "void"]  # "x" is no command
        prompt.publish(String(data="Trial Touch-0007-0 (8/30): put these cards on the table"))
        child.expect("Trial Touch-0007-0")
    finally:
        child.sendintr()
        child.expect(pexpect.EOF)
        child.close()
        robot.close()
