"""The convergence study: rows from the runs' validation logs, files with provenance."""
import json

import pytest

from icmlib.evaluation.convergence import convergence_rows, main
from icmlib.presets import get_preset

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.slow
def test_study_writes_table_figure_and_provenance(tmp_path, monkeypatch):
    monkeypatch.setenv("ICM_PRESET", "ci")
    monkeypatch.setenv("ICM_CACHE", str(tmp_path / "cache"))  # its validation periods alone
    from icmlib import presets

    ci = get_preset("ci", variable_rate=True, codec_steps=4, codec_finetune_steps=4,
                    icm_steps=4, val_every=2, icm_val_every=2)
    monkeypatch.setitem(presets.PRESETS, "ci", ci)
    assert main(["--preset", "ci", "--out", str(tmp_path)]) == 0
    doc = json.loads((tmp_path / "convergence.json").read_text())
    assert doc["commit"] and doc["hardware"] and "icmlib.evaluation.convergence" in doc["command"]
    runs = {r["run"] for r in doc["rows"]}
    assert len(runs) == 3
    icm = [r for r in doc["rows"] if r["run"].startswith("ICM")]
    # validations at steps 2 and 4, at each of the 4 rate points, with the detector's mAP
    assert sorted({r["step"] for r in icm}) == [2, 4] and len(icm) == 8
    assert all(r["task_score"] is not None for r in icm)
    base = [r for r in doc["rows"] if "base" in r["run"]]
    assert {r["lambda"] for r in base} == {ci.rd_lambdas[ci.codec_base_rate]}
    assert (tmp_path / "convergence.png").stat().st_size > 0
    assert "| step | λ | bpp |" in (tmp_path / "convergence.md").read_text()


def test_rows_of_a_one_rate_run():
    ckpt = {"meta": {"rate": 0.01, "rate_index": 2, "steps": 4},
            "logs": {"val": [{"step": 2.0, "bpp": 0.5, "psnr": 20.0, "task_score": float("nan")}]}}
    [row] = convergence_rows({"run": ckpt})
    assert (row["rate_index"], row["lambda"], row["step"], row["bpp"]) == (2, 0.01, 2, 0.5)
