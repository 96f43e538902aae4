"""Models load from local directories only: a missing one is named in one line, no hub is asked."""

import os
import subprocess
import sys

import pytest

from gf_policy.vla import PI0StyleVLA, VLAInference, VLAProcessor
from gf_policy.vla.configuration import VLAConfig


@pytest.mark.parametrize("load", [
    lambda d: VLAInference.from_pretrained(d),
    lambda d: PI0StyleVLA.from_paligemma(d),
    lambda d: VLAProcessor.from_pretrained(d, VLAConfig()),
], ids=["checkpoint", "paligemma", "tokenizer"])
def test_a_missing_model_directory_is_named_in_one_line(tmp_path, load):
    missing = tmp_path / "paligemma-3b-pt-224"
    with pytest.raises(FileNotFoundError, match=f"no directory {missing} .models load from local directories only"):
        load(missing)


def test_the_model_hub_is_switched_off_for_every_process_that_loads_models():
    env = {k: v for k, v in os.environ.items() if k != "HF_HUB_OFFLINE"}
    code = "import gf_policy.vla, huggingface_hub.constants as c; print(c.HF_HUB_OFFLINE)"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stdout
    assert out.strip() == "True"
