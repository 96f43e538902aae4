"""gf doctor passes on this machine and names what is missing when something is."""

import os
import subprocess
import sys

import pytest

GF = os.path.join(os.path.dirname(sys.executable), "gf")


@pytest.mark.slow
def test_doctor_passes_here():
    proc = subprocess.run([GF, "doctor"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    for check in ("ros2", "fonts", "vulkan", "assets", "models"):
        assert f"] {check}" in proc.stdout
    assert "FAIL" not in proc.stdout


def test_doctor_fails_clearly_when_the_vulkan_icd_is_missing():
    env = dict(os.environ, VK_ICD_FILENAMES="/nonexistent/lvp_icd.json")
    proc = subprocess.run([GF, "doctor", "--only", "vulkan"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    assert "VK_ICD_FILENAMES points to /nonexistent/lvp_icd.json" in proc.stdout
    assert "Mesa >= 24.3" in proc.stdout


def test_doctor_fails_when_the_emoji_font_is_missing():
    env = dict(os.environ, GF_EMOJI_FONT="/nonexistent/NotoColorEmoji.ttf")
    proc = subprocess.run([GF, "doctor", "--only", "fonts"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 1
    assert "fonts-noto-color-emoji" in proc.stdout
