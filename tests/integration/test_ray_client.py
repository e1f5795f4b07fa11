"""`exdd client score --ray`: images read by Ray tasks on a local 2-CPU Ray, scored by the real Triton server.

The rows (order, error rows; scores within exdd.defaults.SCORE_RTOL) equal those of the same job without Ray, and a
partial result file resumes the same way.
"""

from __future__ import annotations

import os

import pytest

pytest.importorskip("ray")

import test_client
import triton_util as tu
from test_client import score

from exdd.result_rows import read_rows

pytestmark = pytest.mark.triton
folder = test_client.folder  # test_client's module fixture (server: conftest)
RAY = ["--ray", "local", "--ray-cpus", "2"]


@pytest.fixture(scope="module")
def reference(server, folder, tmp_path_factory):
    out = tmp_path_factory.mktemp("ref") / "ref.jsonl"
    p = score(str(folder), "--out", str(out), "--url", server.grpc_url, "--batch-size", "4")
    assert p.returncode == 1, p.stderr
    return read_rows(str(out))


def test_ray_job_gives_the_same_rows(server, folder, reference, tmp_path):
    out = tmp_path / "ray.jsonl"
    p = score(str(folder), "--out", str(out), "--url", server.grpc_url, "--batch-size", "4", *RAY)
    assert p.returncode == 1, p.stderr  # the two bad files are error rows, as without Ray
    assert "scored: 24, failed: 2" in p.stdout and "Traceback" not in p.stderr
    assert "ray: 7 read tasks on 2 CPUs, 0 batches read locally" in p.stderr  # 26 files, batches of 4
    rows = read_rows(str(out))
    tu.assert_rows_agree(rows, reference)
    assert {os.path.basename(r["path"]) for r in rows if r["error"]} == {"corrupt.png", "notes.png"}


def test_ray_job_resumes_a_partial_file(server, folder, reference, tmp_path):
    import json

    out = tmp_path / "partial.jsonl"
    with open(out, "w") as f:  # the first 10 rows done, then a torn line
        for r in reference[:10]:
            f.write(json.dumps(r) + "\n")
        f.write('{"path": "tor')
    p = score(str(folder), "--out", str(out), "--url", server.grpc_url, "--batch-size", "3", *RAY)
    assert p.returncode == 1, p.stderr
    assert "already done: 10" in p.stdout
    done = "".join(json.dumps(r) + "\n" for r in reference[:10])
    assert out.read_text().startswith(done), "the rows done before are kept byte for byte"
    tu.assert_rows_agree(read_rows(str(out)), reference)


def test_ray_address_that_is_a_path_is_a_clear_error(folder, tmp_path):
    p = score(str(folder), "--out", str(tmp_path / "x.jsonl"), "--ray", str(folder / "line 0"), check=False)
    assert p.returncode == 2 and "is a path" in p.stderr and "Traceback" not in p.stderr
