"""gf-bench record: the recorder over DDS beside the rosbags writer alone (--json)."""

import json

import pytest

from gf_teleop import bench
from gf_teleop import episodes as ep

pytestmark = pytest.mark.slow


def test_gf_bench_record_measures_the_recorder_beside_the_writer_alone(capsys, fresh_domain):
    rc = bench.main(["--seconds", "1.5", "--rate", "10", "--state-rate", "20", "--width", "64", "--height", "48",
                     "--ladder", "", "--writer-frames", "20", "--json"])
    figures = json.loads(capsys.readouterr().out)
    assert rc == (0 if figures["steady_drops"] == 0 else 1)
    assert figures["reference_writer_alone"]["frames"] == 20 and figures["reference_writer_alone"]["fps"] > 0
    steady = figures["phases"]["steady"]
    assert steady["published"][ep.IMAGE] >= 10 and steady["recorded"][ep.IMAGE] <= steady["published"][ep.IMAGE]
    assert figures["steady_drops"] == sum(steady["published"][t] - steady["recorded"][t] for t in bench.TOPICS)
