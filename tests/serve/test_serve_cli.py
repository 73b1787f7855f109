"""tools/serve.py: which checkpoint it serves, what it says without one, where it listens, and that
it loads the model once with weights_only."""
import shutil
from dataclasses import asdict

import pytest
import torch
from fastapi.testclient import TestClient

from detector_tools import serve


def test_a_folder_serves_its_newest_checkpoint(serve_files, tmp_path):
    for it in (2, 10):
        shutil.copy(serve_files["ckpt"], tmp_path / f"checkpoint_{it:08d}.pth")
    assert serve.resolve_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint_00000010.pth")
    assert serve.resolve_checkpoint(serve_files["ckpt"]) == serve_files["ckpt"]


def test_without_a_checkpoint_it_says_what_to_run(tmp_path, capsys):
    assert serve.main(["--checkpoint", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert f"no checkpoint_*.pth in {tmp_path}" in err and "make demo" in err
    assert serve.main(["--checkpoint", str(tmp_path / "missing.pth")]) == 2
    assert "checkpoint not found" in capsys.readouterr().err


def test_it_listens_on_loopback_unless_told_otherwise():
    assert serve.parse_args(["--checkpoint", "x"]).host == "127.0.0.1"
    assert serve.parse_args(["--checkpoint", "x"]).port == 8000
    assert serve.is_loopback("127.0.0.1") and serve.is_loopback("::1") and serve.is_loopback("localhost")
    assert not serve.is_loopback("0.0.0.0") and not serve.is_loopback("192.168.1.5")


def test_the_model_is_loaded_once_with_weights_only(serve_files, monkeypatch):
    calls = []
    real_load = torch.load

    def recording_load(*args, **kwargs):
        calls.append(kwargs.get("weights_only"))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    args = serve.parse_args(["--checkpoint", serve_files["ckpt"], "--max-upload-mb", "0.5", "--max-megapixels", "2",
                             "--workers", "2", "--queue", "3", "--read-timeout", "5", "--max-tiles", "40",
                             "--upload-slots", "4", "--header-timeout", "2.5"])
    app, served_limits, checkpoint = serve.create_app(args)
    files = {"query": open(serve_files["query"], "rb").read(), "support": open(serve_files["support"], "rb").read()}
    with TestClient(app) as client:
        for _ in range(3):
            assert client.post("/api/predict", files=files).status_code == 200
        limits = client.get("/api/model").json()["limits"]
    assert calls == [True]
    assert limits == asdict(served_limits)  # the limits the app reports are the ones it runs with
    assert limits == {"max_upload_bytes": 512 * 1024, "max_pixels": 2_000_000, "max_tiles": 40, "workers": 2,
                      "queue_size": 3, "upload_slots": 4, "read_timeout_s": 5.0, "header_timeout_s": 2.5,
                      "max_header_bytes": 16384}


@pytest.mark.parametrize("argv, message", [(["--workers", "0"], "--workers: must be >= 1")])
def test_bad_limits_exit_with_a_message(serve_files, capsys, argv, message):
    with pytest.raises(SystemExit) as e:
        serve.main(["--checkpoint", serve_files["ckpt"], *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.strip().count("\n") == 0
