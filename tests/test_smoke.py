import json


def test_submit_runs_a_job_and_wait_returns_its_status(run, submit, tmp_path):
    out = tmp_path / "out.txt"
    job = submit("-o", out, "--", "sh", "-c", "echo hello $JOB_ID; exit 3")
    result = run("wait", job)
    assert result.returncode == 3
    assert out.read_text() == f"hello {job}\n"
    status = json.loads(run("status", "--json").stdout)
    assert [(j["id"], j["state"], j["exit_status"]) for j in status] == [(job, "Failed", 3)]
